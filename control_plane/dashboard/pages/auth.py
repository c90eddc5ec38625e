"""Sign-in, sign-out and the account page (password, API tokens)."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from control_plane.core.auth import Role, needs_role
from control_plane.core.deps import SESSION_COOKIE, ContextDep, SessionDep
from control_plane.core.errors import Unauthorized
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.users.service import UserService

router = page_router()
# Double-submit token of the sign-in form (there is no session yet to hold a CSRF token).
LOGIN_COOKIE = "cp_login"
ANYONE = needs_role(Role.viewer)


def _safe_next(target: str) -> str:
    """Only paths inside the dashboard: never an open redirect to another site."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui/"


@router.get("/login")
def login_form(request: Request, next: str = "/ui/", error: str = "") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", None, next=_safe_next(next), login=token, error=error)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/ui/login")
    return response


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    login_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
) -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), login_token.encode()):
        return page(
            request,
            "login.html",
            None,
            403,
            next=_safe_next(next),
            login="",
            error="the sign-in form expired; reload the page",
        )
    service = UserService(session, ctx)
    try:
        user = service.check_password(username, password)
    except Unauthorized as exc:
        token = secrets.token_urlsafe(24)
        response = page(
            request, "login.html", None, 401, next=_safe_next(next), login=token, error=str(exc)
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/ui/login")
        return response
    sid, _ = service.start_session(user)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=ctx.settings.auth.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=ctx.settings.auth.cookie_secure,
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout", openapi_extra=ANYONE)
def logout(
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    csrf_token: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    if not hmac.compare_digest(csrf_token.encode(), user.csrf.encode()):
        return page(request, "error.html", user, 403, message="missing or wrong CSRF token")
    UserService(session, ctx).end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account")
def account(request: Request, user: PageUser, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    service = UserService(session, ctx)
    return page(
        request, "account.html", user, me=service.get(user.name), tokens=service.tokens(user.name)
    )
