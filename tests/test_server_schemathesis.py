"""Schemathesis against the service's own OpenAPI schema over real HTTP: no 5xx, and answers match the schema.

The service plays against the scripted model server in a child process (so nothing hangs), with small
bounds so generated batches stay quick; examples per operation are bounded to keep the run short.
Every check runs except `positive_data_acceptance`: an environment validates its own seed data
(`env_seed`, `verifier_metadata`), which a schema cannot state, so a schema-valid row can still be one
the environment refuses (422 naming the field, never a 5xx).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.testing import FakeModelProcess

BOUNDS = ServerSettings(max_batch_size=3, max_repeats=2, max_turns=4, batch_concurrency=4, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def api_schema() -> Iterator[schemathesis.BaseSchema]:
    with FakeModelProcess() as models:
        url = models.base_url
        args = make_parser().parse_args(["serve", "--policy-base-url", url, "--user-base-url", url])
        app = create_app(BOUNDS, lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            yield schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def test_every_operation_conforms_to_the_openapi_schema(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/rollouts", "POST /v1/rollouts/batch", "POST /run"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            derandomize=True,  # the same cases every run: CI fails on a change, never on a lucky draw
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=60, excluded_checks=[positive_data_acceptance])

        conforms()
