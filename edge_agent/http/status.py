"""Agent errors -> HTTP statuses, in one place, and the protocol's error body.

Everything below the routes raises ``AgentError`` subclasses and knows nothing of HTTP; the
router turns any of them into ``{"error": "<message>"}`` with the status mapped here (the
protocol's error object). ``HttpError`` is the transport's own refusals (unknown route, wrong
method, body too large, missing token), raised by the server and the routes alike so that a
refused request looks the same whatever refused it.
"""

from __future__ import annotations

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

_STATUSES: dict[type[AgentError], int] = {
    InvalidInput: 400,
    InstallFailed: 400,
    ModelNotFound: 404,
    JobNotFound: 404,
    ModelNotReady: 503,
    Overloaded: 503,
    InferenceFailed: 500,
    RegionNotFound: 404,
    Unsupported: 501,
}

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request the HTTP transport itself refuses, with its status and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def status_for(exc: AgentError) -> int:
    for cls in type(exc).__mro__:
        status = _STATUSES.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status
    return 500


def retry_after(status: int) -> dict[str, str]:
    """503 answers invite a retry: overload and loading pass by themselves."""
    return {"Retry-After": "1"} if status == 503 else {}
