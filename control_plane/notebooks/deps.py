"""Typed dependency for the notebook servers (started with the app, or lazily without it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from control_plane.core.context import app_state
from control_plane.notebooks.servers import JupyterServers


def servers_for(app: Any) -> JupyterServers:
    """The app's JupyterServers (``app.state.notebooks``), started on first use if needed."""
    return app_state(app, "notebooks", JupyterServers)


def get_servers(request: Request) -> JupyterServers:
    return servers_for(request.app)


ServersDep = Annotated[JupyterServers, Depends(get_servers)]
