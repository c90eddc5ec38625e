"""Agent errors -> gRPC status codes, in one place, and the one decorator servicers use.

Everything below the servicers raises ``AgentError`` subclasses and knows nothing of gRPC;
``@aborts_with_status`` turns such an error into an aborted call with the mapped code and the
error's message, so no servicer method repeats a try/abort block.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from edge_agent.errors import (
    AgentError,
    InferenceFailed,
    InstallFailed,
    InvalidInput,
    JobNotFound,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RegionNotFound,
    Unsupported,
)

_CODES: dict[type[AgentError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    InstallFailed: grpc.StatusCode.FAILED_PRECONDITION,
    RegionNotFound: grpc.StatusCode.NOT_FOUND,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
}


def status_for(exc: AgentError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_name(exc: AgentError) -> str:
    """The code's name (``INVALID_ARGUMENT``, ...), as the request metrics label failures."""
    return status_for(exc).name


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def aborts_with_status(
    method: Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Wrap a servicer method: an ``AgentError`` aborts the call with its mapped status."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
            raise  # not reached: abort raises; keeps type checkers from seeing a None return

    return wrapper
