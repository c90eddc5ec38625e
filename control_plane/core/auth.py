"""Who is calling and what their role lets them do: roles, principals and the route policy.

Core holds only the vocabulary and the policy; the users domain stores users, tokens and
sessions and plugs an ``Authenticator`` into the app context (``AppContext.authenticator``), so
every domain's routes are checked without core importing the users domain.

The policy: the role a request needs comes from its HTTP method (GET/HEAD/OPTIONS read, so
``viewer``; everything else writes, so ``engineer``), unless the route names another role with
``openapi_extra=needs_role(Role.labeller)`` (also shown in the OpenAPI document as
``x-required-role``). A route added to the API gets a sensible role without any edit here.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.routing import APIRoute
from starlette.requests import Request

ROLE_KEY = "x-required-role"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(enum.StrEnum):
    """Roles in increasing order of rights: each role may do what the ones before it may."""

    viewer = "viewer"
    labeller = "labeller"
    engineer = "engineer"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user name, their role, and how they proved it."""

    name: str
    role: Role
    # "token" (Authorization: Bearer) or "session" (the dashboard's cookie).
    via: str = "token"
    # The session's CSRF token (sessions only): unsafe requests must echo it.
    csrf: str = ""
    # A generated one-time password is still in use: the dashboard asks for a new one first.
    must_change_password: bool = False


class Authenticator(Protocol):
    """Resolves credentials to a principal (implemented by the users domain)."""

    def from_token(self, token: str) -> Principal | None:
        """The principal owning this API token, or None."""

    def from_session(self, session_id: str) -> Principal | None:
        """The principal of this live session cookie, or None."""


class SharedTokenAuthenticator:
    """The settings' ``api_token`` as the bootstrap admin; no sessions.

    Used by a context no users domain was plugged into (CLI commands, bare tests), so the
    shared token keeps working everywhere.
    """

    def __init__(self, api_token: str, admin_name: str = "admin") -> None:
        self._token = api_token.encode()
        self._admin = admin_name

    def from_token(self, token: str) -> Principal | None:
        if hmac.compare_digest(token.encode(), self._token):
            return Principal(self._admin, Role.admin)
        return None

    def from_session(self, session_id: str) -> Principal | None:
        return None


def needs_role(role: Role) -> dict[str, Any]:
    """``openapi_extra`` of a route that needs another role than its method implies."""
    return {ROLE_KEY: role.value}


def required_role(request: Request) -> Role:
    """The role this request needs: the route's override, else the method's default."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and route.openapi_extra and ROLE_KEY in route.openapi_extra:
        return Role(route.openapi_extra[ROLE_KEY])
    return Role.viewer if request.method in READ_METHODS else Role.engineer
