"""One exception tree for every failed call, built from the API's error bodies.

The control plane answers every error as ``{"detail": ..., "error": <name>}``; the SDK raises the
class of that name (``NotFound``, ``Conflict``, ...), or by status when the name is unknown.
All derive from ``ApiError``, which derives from ``EdgeInferenceError``; a call that never reached
the server (after the retries) raises ``ConnectionFailed``, a wait that ran out ``WaitTimeout``.
"""

from __future__ import annotations

from typing import Any


class EdgeInferenceError(Exception):
    """Base of everything the SDK raises."""


class ConnectionFailed(EdgeInferenceError):
    """The control plane could not be reached (after the retries)."""


class WaitTimeout(EdgeInferenceError):
    """A wait (job, model, notebook) did not reach a final state in time."""


class ApiError(EdgeInferenceError):
    """The control plane answered with an error status."""

    def __init__(self, status: int, error: str, detail: Any, method: str = "", url: str = ""):
        self.status = status
        self.error = error
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(f"{status} {error}: {_describe(detail)}")


class BadRequest(ApiError):
    """400: the request could not be read."""


class Unauthorized(ApiError):
    """401: missing or wrong API token."""


class Forbidden(ApiError):
    """403: valid credentials whose role does not allow the request (signing in won't help)."""


class NotFound(ApiError):
    """404: the resource (or route) does not exist."""


class MethodNotAllowed(ApiError):
    """405."""


class Conflict(ApiError):
    """409: clashes with existing state (a name taken, a job already final, ...)."""


class PayloadTooLarge(ApiError):
    """413: an upload over a limit (``ArchiveTooLarge`` for zips)."""


class ArchiveTooLarge(PayloadTooLarge):
    """413: a zip over its kind's limits."""


class InvalidRequest(ApiError):
    """422: well-formed but impossible (``InvalidArchive``, ``PackageRejected`` derive from it)."""


class InvalidArchive(InvalidRequest):
    """422: a malformed or unsafe zip."""


class PackageRejected(InvalidRequest):
    """422: a package failed verification."""


class ValidationError(InvalidRequest):
    """422: the body, path or query did not match the schema (``detail`` lists the problems)."""


class Unavailable(ApiError):
    """503: what the request needs is not running (``BrokerUnavailable`` derives from it)."""


class BrokerUnavailable(Unavailable):
    """503: the MQTT broker cannot be reached."""


class ServerError(ApiError):
    """500 and other 5xx: a bug on the server (its log has the details)."""


_BY_NAME: dict[str, type[ApiError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict, PayloadTooLarge,
        ArchiveTooLarge, InvalidRequest, InvalidArchive, PackageRejected, ValidationError,
        Unavailable, BrokerUnavailable,
    )
}  # fmt: skip
_BY_NAME["InternalServerError"] = ServerError
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 413: PayloadTooLarge, 422: InvalidRequest, 503: Unavailable,
}  # fmt: skip


def _describe(detail: Any) -> str:
    if isinstance(detail, list):  # request validation: [{loc, msg, ...}]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', item)}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def error_for(status: int, body: Any, method: str = "", url: str = "") -> ApiError:
    """The exception for an error answer (``body``: the parsed JSON, or the text)."""
    name, detail = "", body
    if isinstance(body, dict):
        name, detail = str(body.get("error", "")), body.get("detail", body)
    cls = _BY_NAME.get(name)
    if cls is None:
        cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, name or cls.__name__, detail, method, url)
