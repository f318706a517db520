"""What a weight-sync step answers, shared by the engine that does it (engine/weights.py) and the HTTP
client that asks the service for it (client.py), so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PauseMode = Literal["keep", "wait", "abort"]


@dataclass(frozen=True, slots=True)
class StepReport:
    """What one step did: the state after it, each replica's outcome ("ok" or what failed), and the
    replicas it took out of rotation (and why)."""

    step: Literal["pause", "update", "resume"]
    version: str | None
    adapter: str | None
    paused: bool
    mode: PauseMode | None
    replicas: dict[str, str]
    taken_out: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReplicaWeights:
    """One replica as sparring and the server see it: in rotation or not (and why), and what the server
    says of its version and pause (None, with `error`, when it did not say)."""

    url: str
    in_rotation: bool
    out_reason: str | None
    version: str | None
    paused: bool | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WeightsInfo:
    """The current version sparring was told (None: never), the adapter policy calls go to, whether
    generation is paused (and how, for how long, until when), and each replica."""

    version: str | None
    adapter: str | None
    paused: bool
    mode: PauseMode | None
    paused_for_s: float | None
    pause_timeout_s: float | None
    auto_resumes: int
    replicas: list[ReplicaWeights] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
