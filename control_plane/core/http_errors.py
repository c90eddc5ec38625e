"""The one place where control-plane errors become HTTP statuses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from control_plane.core import errors

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.ControlPlaneError], int] = {
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidRequest: 422,
    errors.PackageRejected: 422,
    errors.BrokerUnavailable: 503,
}


def status_for(exc: errors.ControlPlaneError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ControlPlaneError)
    status = status_for(exc)
    if status >= 500:
        logger.error("request failed: %s", exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"detail": str(exc), "error": type(exc).__name__}, status_code=status, headers=headers
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ControlPlaneError, _handle)
