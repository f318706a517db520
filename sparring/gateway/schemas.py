"""What gateway clients send to manage sessions: the bodies of `POST /v1/sessions` and of `finish`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SessionLimits(BaseModel):
    """Per-session limits; unset ones fall back to the gateway's settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_calls: int | None = Field(default=None, ge=1, description="Model calls the session may make; more get 409.")
    max_tokens_per_call: int | None = Field(default=None, ge=1, description="Cap on each call's max_tokens.")
    idle_timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds without calls before the session aborts."
    )


class CreateSession(BaseModel):
    """`POST /v1/sessions`: everything optional."""

    model_config = ConfigDict(extra="forbid")

    task: dict[str, Any] = Field(default_factory=dict, description="The task row (its `id`, `env_seed`, ...).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Kept in the record as is.")
    limits: SessionLimits = Field(default_factory=SessionLimits)
    # `default=` by name: pyright reads a field's default only from that keyword (dataclass_transform).
    task_index: int | None = Field(default=None, ge=0)
    repeat_index: int = Field(default=0, ge=0)


class FinishSession(BaseModel):
    """`POST /v1/sessions/{id}/finish`: a reward, reward components (summed), or an environment's verifier."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reward: float | None = None
    reward_components: dict[str, float] | None = None
    verifier: str | None = Field(default=None, description="An environment whose verifier scores the session.")
    env_state: Any = Field(default=None, description="The environment's final state for the verifier (else replayed).")
    env_result: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(default=None, description="Merged into the session's metadata.")
    messages: list[dict[str, Any]] | None = Field(
        None,
        description="The agent's final history: the session's own (last request and reply) plus what came after "
        "it, e.g. the tool results of the last move, which no model call saw. The tail joins the record.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FinishSession:
        given = self.reward is not None or self.reward_components is not None
        if given == (self.verifier is not None):
            raise ValueError("give a reward (and/or reward_components) or a verifier, exactly one of the two")
        if self.env_state is not None and self.verifier is None:
            raise ValueError("env_state is read by a verifier only; name one")
        return self
