"""EMQX's HTTP authentication and authorization hooks (``fleet/emqx.py`` decides).

Outside ``/api/v1``: EMQX is no user, so it carries ``mqtt.hook_token`` instead of an API
token, and a route answers 404 while no hook token is set (the hooks are off). Answers follow
EMQX's HTTP authenticator and authorizer formats: always 200 with a JSON ``result``, since EMQX
takes any other status as "ignore".
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.core.errors import NotFound, Unauthorized
from control_plane.fleet import emqx

router = APIRouter(tags=["broker hooks"])


class AuthnRequest(BaseModel):
    username: str = ""
    password: str = ""
    clientid: str = ""


class AuthnAnswer(BaseModel):
    result: str = Field(description="allow | deny | ignore")
    is_superuser: bool = False


class AuthzRequest(BaseModel):
    username: str = ""
    clientid: str = ""
    topic: str = ""
    action: str = Field("", description="publish | subscribe")


class AuthzAnswer(BaseModel):
    result: str = Field(description="allow | deny | ignore")


def _check(ctx: ContextDep, authorization: str | None) -> None:
    token = ctx.settings.mqtt.hook_token
    if token is None:
        raise NotFound("broker hooks are off (CONTROL_PLANE_BROKER_HOOK_TOKEN is not set)")
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest((authorization or "").encode(), expected):
        raise Unauthorized("missing or wrong broker hook token")


@router.post(emqx.AUTHN_PATH, response_model=AuthnAnswer)
def authn(
    body: AuthnRequest,
    ctx: ContextDep,
    session: SessionDep,
    authorization: str | None = Header(None),
) -> AuthnAnswer:
    """EMQX asks whether a client may connect."""
    _check(ctx, authorization)
    result = emqx.authenticate(ctx.settings, session, body.username, body.password, body.clientid)
    return AuthnAnswer(result=result)


@router.post(emqx.AUTHZ_PATH, response_model=AuthzAnswer)
def authz(
    body: AuthzRequest,
    ctx: ContextDep,
    session: SessionDep,
    authorization: str | None = Header(None),
) -> AuthzAnswer:
    """EMQX asks whether a client may publish to, or subscribe to, a topic."""
    _check(ctx, authorization)
    result = emqx.authorize(
        ctx.settings, session, body.username, body.clientid, body.topic, body.action
    )
    return AuthzAnswer(result=result)
