"""Users (admins only): accounts and roles. Writes are the REST API's ``/users`` routes."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.core.auth import Role, needs_role
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.users.service import UserService

router = page_router()


@router.get("/users", openapi_extra=needs_role(Role.admin))
def users(request: Request, user: PageUser, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    return page(
        request, "users.html", user, users=UserService(session, ctx).list(), roles=list(Role)
    )
