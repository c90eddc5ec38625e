"""What every page module shares: the route class that renders service errors as pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import ControlPlaneError
from control_plane.core.http_errors import status_for
from control_plane.dashboard.render import page
from control_plane.datasets.service import DatasetService
from control_plane.datasets.versions.service import VersionService


class PageRoute(APIRoute):
    """A page whose service raised (an unknown dataset, say) answers with an error page carrying
    the status the REST API would give (``core.http_errors.status_for``), not a JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def rendered(request: Request) -> Response:
            try:
                return await handler(request)
            except ControlPlaneError as exc:
                status = status_for(exc)
                if status == 401:
                    raise
                return page(request, "error.html", None, status_code=status, message=str(exc))

        return rendered


def page_router() -> APIRouter:
    return APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


def version_choices(session: Session, ctx: AppContext) -> list[tuple[str, str, str]]:
    """Every published dataset version as ``(dataset id, dataset name, version)``: the choices of
    the forms that start something on a version (training jobs, notebooks, batch services)."""
    versions = VersionService(session, ctx)
    return [
        (d.id, d.name, v.name)
        for d in DatasetService(session, ctx).list()
        for v in versions.list(d.id)
    ]
