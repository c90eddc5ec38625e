"""Agent errors -> gRPC status codes, in one place."""

from __future__ import annotations

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
)

_CODES: dict[type[AgentError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    InstallFailed: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: AgentError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
