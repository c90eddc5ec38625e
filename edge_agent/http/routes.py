"""The KServe v2 REST routes (and Triton's extensions), translated onto the data plane.

Translation only, as ``grpc/inference_servicer.py`` is for gRPC: each route reads the path and
body, calls ``DataPlane``, and renders the result with ``codec.py``. Errors are mapped to an
HTTP status in one place, ``Router.__call__`` (statuses from ``status.py``), always with the
protocol's ``{"error": "..."}`` body.

    GET  /v2/health/live | /v2/health/ready                 200, or 400 (protocol: 4xx = false)
    GET  /v2                                                server metadata
    GET  /v2/models/stats                                   statistics of every loaded version
    GET  /v2/models/{name}[/versions/{v}]                   model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready             200, or 400
    GET  /v2/models/{name}[/versions/{v}]/config            Triton model configuration
    GET  /v2/models/{name}[/versions/{v}]/stats             Triton statistics
    POST /v2/models/{name}[/versions/{v}]/infer             JSON, binary tensor data, multipart
    POST /v2/repository/index                               loaded versions
    POST /v2/repository/models/{name}/load | unload         refused: the agent installs packages
    GET  /v2/systemsharedmemory[/region/{name}]/status      registered regions (loopback only)
    POST /v2/systemsharedmemory/region/{name}/register      {"key", "offset", "byte_size"}
    POST /v2/systemsharedmemory[/region/{name}]/unregister  one region, or all
    *    /v2/cudasharedmemory/...                           501: not supported
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from edge_agent.errors import AgentError, InvalidInput, Unsupported
from edge_agent.http import codec
from edge_agent.http.server import Request, Response
from edge_agent.http.status import HttpError, retry_after, status_for
from edge_agent.serving.dataplane import DataPlane
from edge_agent.serving.shared_memory import CUDA_UNSUPPORTED, require_local

Route = Callable[[Request, str, str], Awaitable[Response]]


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, [codec.dumps(doc)], codec.JSON_TYPE, headers or {})


def error_response(error: HttpError) -> Response:
    """The protocol's error object; also how the server renders its own refusals."""
    return json_response({"error": str(error)}, error.status, error.headers)


def _empty(status: int) -> Response:
    return Response(status, [], "text/plain")


class Router:
    def __init__(self, dataplane: DataPlane, max_body: int) -> None:
        self.dp = dataplane
        self.max_body = max_body
        # Model routes by their last path segment (after the optional /versions/{v}).
        self._model_routes: dict[str, tuple[str, Route]] = {
            "": ("GET", self._metadata),
            "ready": ("GET", self._model_ready),
            "config": ("GET", self._config),
            "stats": ("GET", self._model_stats),
            "infer": ("POST", self._infer),
        }

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except HttpError as exc:
            return error_response(exc)
        except AgentError as exc:
            status = status_for(exc)
            return error_response(HttpError(status, str(exc), retry_after(status)))

    async def _route(self, request: Request) -> Response:
        segments = [unquote(s) for s in request.path.split("/")]
        if segments and segments[-1] == "" and len(segments) > 2:
            segments.pop()  # a trailing slash
        if len(segments) < 2 or segments[0] != "" or segments[1] != "v2":
            raise _no_route(request)
        rest = segments[2:]
        method = request.method
        match rest:
            case []:
                _allow(request, "GET")
                return json_response(codec.server_metadata(*self.dp.server_metadata()))
            case ["health", "live"]:
                _allow(request, "GET")
                return _empty(200 if self.dp.live() else 400)
            case ["health", "ready"]:
                _allow(request, "GET")
                return _empty(200 if self.dp.server_ready() else 400)
            case ["models", "stats"]:
                _allow(request, "GET")
                return json_response(codec.model_statistics(self.dp.statistics()))
            case ["repository", "index"]:
                _allow(request, "POST")
                return self._index(request)
            case ["systemsharedmemory", *tail]:
                return self._shared_memory(request, tail)
            case ["cudasharedmemory", *_]:
                raise Unsupported(CUDA_UNSUPPORTED)
            case ["repository", "models", _, ("load" | "unload") as action]:
                _allow(request, "POST")
                raise HttpError(
                    501,
                    f"{action} is not supported: models are installed as signed packages "
                    "(AgentService.InstallPackage, edge-agent install) and activated there",
                )
            case ["models", name, "versions", version, *tail] if len(tail) <= 1:
                return await self._model_route(request, method, name, version, tail)
            case ["models", name, *tail] if len(tail) <= 1 and tail != ["versions"]:
                return await self._model_route(request, method, name, "", tail)
        raise _no_route(request)

    async def _model_route(
        self, request: Request, method: str, name: str, version: str, tail: list[str]
    ) -> Response:
        route = self._model_routes.get(tail[0] if tail else "")
        if route is None:
            raise _no_route(request)
        _allow(request, route[0])
        return await route[1](request, name, version)

    # ---------------------------------------------------------------- model routes
    async def _metadata(self, request: Request, name: str, version: str) -> Response:
        md = self.dp.model_metadata(name, version)
        # The chosen variant is not part of OIP metadata; a header carries it (gRPC: trailer).
        return json_response(codec.model_metadata(md), headers={"edge-variant": md.variant})

    async def _model_ready(self, request: Request, name: str, version: str) -> Response:
        return _empty(200 if self.dp.model_ready(name, version) else 400)

    async def _config(self, request: Request, name: str, version: str) -> Response:
        return json_response(codec.model_config(self.dp.model_config(name, version)))

    async def _model_stats(self, request: Request, name: str, version: str) -> Response:
        return json_response(codec.model_statistics(self.dp.statistics(name, version)))

    async def _infer(self, request: Request, name: str, version: str) -> Response:
        headers = request.headers
        body = codec.decompress(request.body, headers.get("content-encoding", ""), self.max_body)
        header_length = headers.get(codec.HEADER_LENGTH.lower())
        if header_length is not None and not header_length.strip().isdigit():
            raise InvalidInput(f"{codec.HEADER_LENGTH} must be a byte count")
        wire = codec.InferWire(
            name,
            version,
            body,
            headers.get("content-type", codec.JSON_TYPE),
            int(header_length) if header_length is not None else None,
            request.local,
        )
        response = await self.dp.infer(wire, codec.decode)
        chunks, json_length = codec.encode(response, wire)
        if json_length is None:
            return Response(200, chunks, codec.JSON_TYPE)
        return Response(200, chunks, codec.BINARY_TYPE, {codec.HEADER_LENGTH: str(json_length)})

    # ---------------------------------------------------------------- shared memory
    def _shared_memory(self, request: Request, tail: list[str]) -> Response:
        """``/v2/systemsharedmemory[/region/{name}]/status | register | unregister``."""
        match tail:
            case ["status"]:
                name, action = "", "status"
            case ["unregister"]:
                name, action = "", "unregister"
            case ["region", name, ("status" | "register" | "unregister") as action] if name:
                pass
            case _:
                raise _no_route(request)
        _allow(request, "GET" if action == "status" else "POST")
        require_local(request.local)
        shm = self.dp.shm
        if action == "status":
            return json_response(codec.shm_status(shm.status(name)))
        if action == "register":
            shm.register(name, *codec.shm_register(request.body))
        else:
            shm.unregister(name)
        return _empty(200)

    # ---------------------------------------------------------------- repository
    def _index(self, request: Request) -> Response:
        ready = False
        if request.body.strip():
            try:
                doc = codec.loads(request.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"the index request is not valid JSON: {exc}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise InvalidInput('the index request is {"ready": true|false}')
            ready = doc.get("ready", False)
        return json_response(codec.repository_index(self.dp.repository_index(ready)))


def _allow(request: Request, method: str) -> None:
    if request.method != method:
        raise HttpError(
            405,
            f"{request.method} is not allowed on {request.path}; use {method}",
            {"Allow": method},
        )


def _no_route(request: Request) -> HttpError:
    return HttpError(
        404,
        f"no route {request.method} {request.path}: the agent serves the KServe v2 protocol "
        "under /v2 (e.g. /v2/models/<name>/infer)",
    )
