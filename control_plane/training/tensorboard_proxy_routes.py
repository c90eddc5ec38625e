"""/tensorboard/{id}/...: a visualization's TensorBoard through the control plane.

TensorBoard binds to loopback, so a browser reaches it only here, behind the control plane's own
auth: a dashboard session cookie or an API token (``Authorization: Bearer``). Reading is enough:
TensorBoard only shows event files, and its ``POST`` requests (the time-series plugin asks for
its data that way) are queries, so a viewer may make them. Anonymous requests get 401.

The proxy strips its prefix (``/tensorboard/<id>``) and forwards to TensorBoard's root;
TensorBoard's page asks for everything with relative URLs, so it works below any prefix. Every
request counts as activity for the server's idle stop. The client's ``Authorization`` and
cookies are not forwarded.
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.background import BackgroundTask

from control_plane.core.auth import Principal, Role
from control_plane.core.context import AppContext
from control_plane.core.deps import SESSION_COOKIE, authenticator
from control_plane.core.errors import Forbidden, PayloadTooLarge, Unauthorized, Unavailable
from control_plane.core.proxying import HOP_HEADERS, LoopClients
from control_plane.training.runtime import runtime_for

router = APIRouter(tags=["visualizations"])

PREFIX = "/tensorboard"
METHODS = ["GET", "POST", "HEAD"]
#: TensorBoard's own requests are small queries; a bigger body is refused before it is read whole.
MAX_BODY_BYTES = 1 << 20
_HOP = HOP_HEADERS
_clients = LoopClients(timeout_s=120.0)


def _client() -> httpx.AsyncClient:
    return _clients.get()


def _principal(ctx: AppContext, request: Request) -> Principal:
    """The caller (bearer token, else session cookie); 401 without one, 403 below viewer."""
    auth = authenticator(ctx)
    principal: Principal | None = None
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        principal = auth.from_token(value)
    elif SESSION_COOKIE in request.cookies:
        principal = auth.from_session(request.cookies[SESSION_COOKIE])
    if principal is None:
        raise Unauthorized("sign in (or send an API token) to see TensorBoard")
    if not principal.role.allows(Role.viewer):
        raise Forbidden(f"{principal.name} may not read TensorBoard")
    return principal


@router.get(PREFIX + "/{vid}", include_in_schema=False)
def tensorboard_root(vid: str) -> RedirectResponse:
    """TensorBoard's relative URLs need the trailing slash."""
    return RedirectResponse(f"{PREFIX}/{vid}/", status_code=307)


@router.api_route(PREFIX + "/{vid}/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy_tensorboard(vid: str, path: str, request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    _principal(ctx, request)
    item = runtime_for(request.app).visualizations.get(vid)  # NotFound; touches (activity)
    if item.state != "running" or item.port is None:
        raise Unavailable(f"visualization {vid} is {item.state}: {item.reason}".rstrip(": "))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds {MAX_BODY_BYTES}")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    query = request.url.query
    url = f"http://127.0.0.1:{item.port}/{path}" + (f"?{query}" if query else "")
    client = _client()
    upstream = client.build_request(request.method, url, headers=headers, content=body)
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        raise Unavailable(f"TensorBoard {vid} did not answer: {exc}") from None
    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
    )
    for k, v in answer.headers.multi_items():
        if k.lower() not in _HOP or k.lower() == "content-length":
            response.headers.append(k, v)
    return response
