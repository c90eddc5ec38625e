"""Which REST route each SDK method calls, so a test can hold the SDK level with the API.

``@route("GET", "/datasets/{dataset_id}")`` records the route on the method; ``sdk_routes()``
collects them from every resource class. ``tests/sdk/test_coverage.py`` compares that set with
the control plane's OpenAPI document and fails on a route without a method (and on a method
whose route is gone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def route(method: str, path: str) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        routes = getattr(fn, "__routes__", [])
        fn.__routes__ = [*routes, (method.upper(), path)]  # type: ignore[attr-defined]
        return fn

    return mark


def sdk_routes() -> set[tuple[str, str]]:
    """Every ``(method, path below /api/v1)`` some SDK method calls."""
    from edge_inference_sdk.client import RESOURCES

    found: set[tuple[str, str]] = set()
    for cls in RESOURCES:
        for attr in vars(cls).values():
            found.update(getattr(attr, "__routes__", []))
    return found
