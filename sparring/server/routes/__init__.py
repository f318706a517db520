"""The rollout service's routes, one APIRouter module per concern; `server/app.py` assembles them.

Handlers reach the service through the `Service` dependency (`app.state.service`); the routers are
built per app only because their request models carry that app's bounds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sparring.server.service import RolloutService


def current_service(request: Request) -> RolloutService:
    """The app's rollout service."""
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[RolloutService, Depends(current_service)]
