"""Typed dependency for the services' supervisor, for pages that read services outside the
REST routes (the dashboard): the same ``app.state.services`` object the routes use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from control_plane.core.context import app_state
from control_plane.services.supervisor import Supervisor


def get_supervisor(request: Request) -> Supervisor:
    return app_state(request.app, "services", Supervisor.start)


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]
