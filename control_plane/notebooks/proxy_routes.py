"""/notebooks/{id}/...: JupyterLab through the control plane, HTTP and kernel websockets.

The browser (or a client) authenticates to the control plane only: the API token as
``Authorization: Bearer``, or once as ``?token=<api token>`` on any proxied URL, which sets an
HttpOnly cookie scoped to ``/notebooks/<id>/`` for the rest of the session. The proxy then speaks
to the loopback server with Jupyter's own token (``Authorization: token ...``), which never leaves
the control plane; the client's ``Authorization`` and the control plane's cookies are not forwarded.
A user's own API token or a dashboard session (engineer or admin) is accepted as well.
Every request and every websocket message counts as activity for the idle stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from control_plane.core.auth import Principal, Role
from control_plane.core.context import AppContext
from control_plane.core.deps import SESSION_COOKIE, authenticator
from control_plane.core.errors import Unauthorized, Unavailable
from control_plane.core.proxying import HOP_HEADERS, LoopClients
from control_plane.notebooks.deps import servers_for

logger = logging.getLogger(__name__)

router = APIRouter(tags=["notebooks"])

COOKIE = "edge_notebook_token"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_HOP = HOP_HEADERS
_clients = LoopClients(timeout_s=300.0)


def _client() -> httpx.AsyncClient:
    return _clients.get()


def _authorized(
    ctx: AppContext,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
) -> tuple[bool, bool]:
    """``(authorized, came from ?token=)``.

    Any API token the control plane accepts (a user's own or the shared one), or a signed-in
    dashboard session. A notebook runs code, so its owner must be allowed to change things: an
    engineer or an admin; a viewer's or labeller's credentials are refused like missing ones.
    """
    auth = authenticator(ctx)

    def allowed(principal: Principal | None) -> bool:
        return principal is not None and principal.role.allows(Role.engineer)

    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and allowed(auth.from_token(value)):
        return True, False
    if COOKIE in cookies and allowed(auth.from_token(cookies[COOKIE])):
        return True, False
    if SESSION_COOKIE in cookies and allowed(auth.from_session(cookies[SESSION_COOKIE])):
        return True, False
    if "token" in query and allowed(auth.from_token(query["token"])):
        return True, True
    return False, False


def _upstream_cookies(cookies: Mapping[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items() if k not in (COOKIE, SESSION_COOKIE))


def _query(items: list[tuple[str, str]]) -> str:
    return urlencode([(k, v) for k, v in items if k != "token"])


@router.api_route("/notebooks/{notebook_id}/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy_http(notebook_id: str, path: str, request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    ok, from_query = _authorized(ctx, request.headers, request.cookies, request.query_params)
    if not ok:
        raise Unauthorized("missing or invalid API token for the notebook proxy")
    servers = servers_for(request.app)
    address = servers.address(notebook_id)
    if address is None:
        raise Unavailable(f"notebook {notebook_id} is not running")
    servers.touch(notebook_id)
    port, jupyter_token = address
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    headers["authorization"] = f"token {jupyter_token}"
    if cookie := _upstream_cookies(request.cookies):
        headers["cookie"] = cookie
    query = _query(request.query_params.multi_items())
    url = f"http://127.0.0.1:{port}/notebooks/{notebook_id}/{path}" + (f"?{query}" if query else "")
    client = _client()
    upstream = client.build_request(
        request.method, url, headers=headers, content=await request.body()
    )
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        raise Unavailable(f"notebook {notebook_id} did not answer: {exc}") from None
    kept = [
        (k, v)
        for k, v in answer.headers.multi_items()
        if k.lower() not in _HOP or k.lower() == "content-length"
    ]
    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
    )
    for k, v in kept:
        response.headers.append(k, v)
    if from_query:
        response.set_cookie(
            COOKIE,
            request.query_params["token"],
            httponly=True,
            samesite="strict",
            path=f"/notebooks/{notebook_id}/",
        )
    return response


@router.websocket("/notebooks/{notebook_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, notebook_id: str, path: str) -> None:
    ctx: AppContext = websocket.app.state.ctx
    ok, _ = _authorized(ctx, websocket.headers, websocket.cookies, websocket.query_params)
    if not ok:
        await websocket.close(code=1008, reason="missing or invalid API token")
        return
    servers = servers_for(websocket.app)
    address = servers.address(notebook_id)
    if address is None:
        await websocket.close(code=1013, reason="notebook is not running")
        return
    port, jupyter_token = address
    query = _query(websocket.query_params.multi_items())
    url = f"ws://127.0.0.1:{port}/notebooks/{notebook_id}/{path}" + (f"?{query}" if query else "")
    offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols", [])]
    try:
        upstream_cm = connect(
            url,
            additional_headers={"Authorization": f"token {jupyter_token}"},
            subprotocols=offered or None,
            max_size=None,
            proxy=None,
            open_timeout=30,
        )
        upstream = await upstream_cm.__aenter__()
    except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as exc:
        logger.warning("notebook %s: websocket %s refused upstream: %s", notebook_id, path, exc)
        await websocket.close(code=1011, reason="the notebook server refused the connection")
        return
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)

        async def client_to_server() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                servers.touch(notebook_id)
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])

        async def server_to_client() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    servers.touch(notebook_id)
                    if isinstance(data, bytes):
                        await websocket.send_bytes(data)
                    else:
                        await websocket.send_text(data)

        tasks = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    finally:
        await upstream_cm.__aexit__(None, None, None)
        with contextlib.suppress(Exception):
            await websocket.close()
