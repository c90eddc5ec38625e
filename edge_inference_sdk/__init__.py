"""Python SDK of the edge inference control plane: datasets to devices from Python.

Needs only httpx and pydantic (``pip install edge-inference[sdk]``), never the server's
dependencies. See docs/sdk.md.
"""

from edge_inference_sdk import errors, models
from edge_inference_sdk.client import Client
from edge_inference_sdk.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    EdgeInferenceError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "EdgeInferenceError",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "errors",
    "models",
]
