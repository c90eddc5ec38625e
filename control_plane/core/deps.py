"""Typed dependencies: the app context, a database session per request, authentication.

``require_token`` is the dependency the app puts on every ``/api/v1`` route: it resolves the
caller (an API token in ``Authorization: Bearer``, or the dashboard's session cookie) and checks
the role the route needs (``core.auth.required_role``). No or bad credentials: 401 with
``WWW-Authenticate: Bearer``; valid credentials without the role: 403. A request authenticated
by the session cookie that changes state must also carry the session's CSRF token in
``X-CSRF-Token`` (a bearer token cannot be sent by a forged cross-site form, a cookie can).
Routes that want the caller use ``CurrentUser``: FastAPI runs the dependency once per request.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from control_plane.core.auth import (
    READ_METHODS,
    Authenticator,
    Principal,
    SharedTokenAuthenticator,
    required_role,
)
from control_plane.core.context import AppContext
from control_plane.core.errors import Forbidden, Unauthorized

SESSION_COOKIE = "cp_session"
CSRF_HEADER = "X-CSRF-Token"

_bearer = HTTPBearer(auto_error=False, description="An API token (a user's, or the settings').")


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def authenticator(ctx: AppContext) -> Authenticator:
    if ctx.authenticator is not None:
        return ctx.authenticator
    return SharedTokenAuthenticator(ctx.settings.api_token.get_secret_value())


def authenticate(
    request: Request, ctx: AppContext, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller, from a bearer token or else the session cookie; ``Unauthorized`` if neither."""
    auth = authenticator(ctx)
    if credentials is not None:
        if credentials.scheme.lower() != "bearer":
            raise Unauthorized("missing bearer token")
        principal = auth.from_token(credentials.credentials)
        if principal is None:
            raise Unauthorized("invalid bearer token")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        principal = auth.from_session(cookie)
        if principal is not None:
            return principal
        raise Unauthorized("session expired or signed out")
    raise Unauthorized("missing bearer token")


def check_csrf(request: Request, principal: Principal, sent: str | None) -> None:
    """Refuse a cookie-authenticated unsafe request without the session's CSRF token."""
    if principal.via != "session" or request.method in READ_METHODS:
        return
    if not sent or not hmac.compare_digest(sent.encode(), principal.csrf.encode()):
        raise Forbidden("missing or wrong CSRF token")


def require_token(
    request: Request,
    ctx: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate(request, ctx, credentials)
    check_csrf(request, principal, request.headers.get(CSRF_HEADER))
    needed = required_role(request)
    if not principal.role.allows(needed):
        raise Forbidden(f"{principal.name} is a {principal.role.value}; this needs {needed.value}")
    return principal


CurrentUser = Annotated[Principal, Depends(require_token)]
