"""Who is looking at a page: the session cookie's principal, with the page's role checked.

Pages use the same policy as the REST API (``core.auth.required_role``: GET needs a viewer; a
route may name another role with ``openapi_extra=needs_role(...)``). A visitor without a session
is sent to the sign-in page (``SignInRequired``, a 303), one without the role gets a 403 page
(``PageForbidden``): the difference between 401 and 403 as a browser sees it.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request

from control_plane.core.auth import Principal, required_role
from control_plane.core.deps import SESSION_COOKIE, ContextDep, authenticator


class SignInRequired(Exception):
    """No live session: the page redirects to the sign-in form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.location = f"/ui/login?next={quote(next_url)}"


class PasswordChangeRequired(Exception):
    """The user signed in with a one-time password and must set their own first."""


class PageForbidden(Exception):
    """Signed in, but the role does not allow this page."""

    def __init__(self, user: Principal, needed: str) -> None:
        super().__init__(f"{user.name} is a {user.role.value}; this page needs {needed}")
        self.user = user


def page_user(request: Request, ctx: ContextDep) -> Principal:
    cookie = request.cookies.get(SESSION_COOKIE)
    user = authenticator(ctx).from_session(cookie) if cookie else None
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    if user.must_change_password and request.url.path != "/ui/account":
        raise PasswordChangeRequired()
    needed = required_role(request)
    if not user.role.allows(needed):
        raise PageForbidden(user, needed.value)
    return user


PageUser = Annotated[Principal, Depends(page_user)]
