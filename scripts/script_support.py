"""Small helpers the demo and benchmark scripts share: free ports, polling, the REST client."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

API = "/api/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy and return it; TimeoutError names it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def api_client(
    base_url: str | None, token: str | None, app: Any = None
) -> tuple[Any, Callable[..., Any]]:
    """An HTTP client for a control plane, and ``call(method, path, **kwargs) -> JSON``.

    Over HTTP (``base_url`` + ``token``), or in-process through FastAPI's TestClient (``app``), so
    the same demo step runs against a served control plane or inside a test.
    """
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if app is not None:
        from fastapi.testclient import TestClient

        client: Any = TestClient(app, headers=headers)
    else:
        if base_url is None:
            raise ValueError("give base_url (and token) or app")
        client = httpx.Client(base_url=base_url, headers=headers, timeout=120)

    def call(method: str, path: str, **kw: Any) -> Any:
        r = client.request(method, f"{API}{path}", **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()

    return client, call
