"""The one place where errors become HTTP responses, all of one shape.

Every error body is ``{"detail": ..., "error": <name>}``, whoever raised it, so a client needs one
way to read failures:

- a ``ControlPlaneError`` (raised by services): its status from ``STATUS_BY_ERROR``, ``detail``
  its message, ``error`` its class name (``NotFound``, ``InvalidArchive``, ...);
- a request FastAPI refuses before the route runs (a body or parameter that does not validate):
  422, ``detail`` the list of problems as FastAPI gives it (``loc``, ``msg``, ``type``),
  ``error`` ``"ValidationError"``;
- a Starlette/FastAPI ``HTTPException`` (an unknown route, a method the route lacks, a body that
  cannot be parsed): its status and detail, ``error`` named after the status (``NotFound``,
  ``MethodNotAllowed``, ``BadRequest``);
- anything else (a bug): 500, ``error`` ``"InternalServerError"`` and a fixed ``detail``, so no
  traceback or internal message reaches the caller.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from control_plane.core import errors

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.ControlPlaneError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidRequest: 422,
    errors.PackageRejected: 422,
    errors.BrokerUnavailable: 503,
    errors.Unavailable: 503,
}

# Status names that would otherwise differ from the error classes raised for the same status
# (and, for 413, between Python versions: "Request Entity Too Large" / "Content Too Large").
_NAME_BY_STATUS: dict[int, str] = {413: "PayloadTooLarge", 422: "InvalidRequest"}

VALIDATION_ERROR = "ValidationError"
INTERNAL_ERROR = "InternalServerError"


def status_for(exc: errors.ControlPlaneError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def name_for_status(status: int) -> str:
    """``error`` for a bare HTTP status: 404 -> ``NotFound``, 405 -> ``MethodNotAllowed``."""
    if status in _NAME_BY_STATUS:
        return _NAME_BY_STATUS[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "HTTPError"
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", phrase))


def error_body(detail: Any, error: str) -> dict[str, Any]:
    """The one error body shape (also for tests and documentation to build on)."""
    return {"detail": detail, "error": error}


async def _control_plane_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ControlPlaneError)
    status = status_for(exc)
    if status >= 500:
        logger.error("request failed: %s", exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        error_body(str(exc), type(exc).__name__), status_code=status, headers=headers
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        error_body(jsonable_encoder(exc.errors()), VALIDATION_ERROR), status_code=422
    )


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code < 200 or exc.status_code in (204, 205, 304):
        return Response(status_code=exc.status_code, headers=headers)  # no body allowed
    return JSONResponse(
        error_body(exc.detail, name_for_status(exc.status_code)),
        status_code=exc.status_code,
        headers=headers,
    )


async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
    """A bug: a fixed message, never the exception's text or traceback.

    Not logged here: Starlette re-raises the exception after this response is sent, so the server
    logs it once, with its traceback.
    """
    return JSONResponse(error_body("internal server error", INTERNAL_ERROR), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ControlPlaneError, _control_plane_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected)
