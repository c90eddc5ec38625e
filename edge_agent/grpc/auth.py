"""The bearer token on gRPC: a server interceptor in front of every service.

Installed only when a token is configured (no cost otherwise). A call without
``authorization: Bearer <token>`` metadata, or with a wrong one, ends with ``UNAUTHENTICATED``
before its servicer runs; the standard health service and OIP's ServerLive / ServerReady stay
open, like ``/v2/health/*`` on HTTP, so probes need no credentials. Reflection is covered: the
API's shape is not secret, but there is no reason to serve anything past the token to strangers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from edge_agent.auth import UNAUTHORIZED, TokenAuth

OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:  # type: ignore[attr-defined]
            return handler
        metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
        presented = next((v for k, v in metadata if k == "authorization"), None)
        if self.auth.accepts(presented):
            return handler
        return _refusal(handler)


async def _abort(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)


async def _abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)
    yield  # pragma: no cover - abort raises; this makes the function an async generator


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that only refuses the call."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_abort, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_abort_stream, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_abort, **kw)
    return grpc.stream_stream_rpc_method_handler(_abort_stream, **kw)
