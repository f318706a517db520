"""The shared HTTP guards of `sparring.web` (auth, body size, request metrics) on a small app served by real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from sparring.server.background import BackgroundServer
from sparring.web.auth import BearerAuth, SecurityError, resolve_api_key
from sparring.web.body import BodySizeLimit
from sparring.web.metrics import HttpMetrics, metrics_endpoint


def make_app(api_key: str | None, max_bytes: int = 100) -> FastAPI:
    registry = CollectorRegistry()
    app = FastAPI()
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(HttpMetrics, registry=registry)

    @app.post("/items/{item_id}")
    async def echo(item_id: int, request: Request) -> dict[str, int]:
        return {"item_id": item_id, "size": len(await request.body())}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/metrics", metrics_endpoint(registry))
    return app


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    with BackgroundServer(make_app("s3cret")) as server:
        yield server.base_url


def test_auth_on_needs_the_exact_token_and_healthz_stays_open(keyed: str) -> None:
    with httpx.Client(base_url=keyed) as client:
        missing = client.post("/items/1", content=b"x")
        assert missing.status_code == 401 and missing.json()["detail"] == "missing bearer token"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/items/1", content=b"x", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
        right = client.post("/items/1", content=b"xy", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json() == {"item_id": 1, "size": 2}
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 401


def test_auth_off_lets_everything_through() -> None:
    with BackgroundServer(make_app(None)) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.post("/items/2", content=b"x").json() == {"item_id": 2, "size": 1}


def test_body_over_the_limit_is_413_naming_it_with_or_without_content_length(keyed: str) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=keyed, headers=auth) as client:
        declared = client.post("/items/1", content=b"x" * 101)
        assert declared.status_code == 413
        assert declared.json()["detail"] == "request body is 101 bytes; the limit is 100 bytes (--max-body-bytes)"

        def chunks() -> Iterator[bytes]:
            yield b"x" * 60
            yield b"x" * 60

        streamed = client.post("/items/1", content=chunks())  # chunked: no Content-Length
        assert streamed.status_code == 413 and "the limit is 100 bytes" in streamed.json()["detail"]
        assert client.post("/items/1", content=b"x" * 100).json()["size"] == 100


def test_request_metrics_use_route_templates(keyed: str) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=keyed, headers=auth) as client:
        client.post("/items/7", content=b"")
        client.post("/items/8", content=b"")
        client.get("/no/such/path")
        text = client.get("/metrics").text
    assert 'sparring_http_requests_total{method="POST",route="/items/{item_id}",status="200"}' in text
    assert 'route="/items/7"' not in text
    assert 'sparring_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'sparring_http_request_duration_seconds_count{method="POST",route="/items/{item_id}"}' in text


def test_api_key_from_file_then_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPARRING_API_KEY", "from-env")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert resolve_api_key(key_file) == "from-file"
    assert resolve_api_key(None) == "from-env"
    monkeypatch.delenv("SPARRING_API_KEY")
    assert resolve_api_key(None) is None
    key_file.write_text("  \n")
    with pytest.raises(SecurityError, match="is empty"):
        resolve_api_key(key_file)
    with pytest.raises(SecurityError, match="cannot read it"):
        resolve_api_key(tmp_path / "missing")
