"""Every error body has one shape, ``{"detail": ..., "error": <name>}``, whatever raised it.

Services' errors, FastAPI's request validation, Starlette's own 404 / 405 and unexpected
exceptions all go through ``control_plane.core.http_errors``. The app is the real one (no broker,
as in tests/datasets) with two extra routes: one raising ``BrokerUnavailable``, which no route
raises while the broker is merely down, and one with a bug, which must answer 500 without
leaking its message or a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.core.errors import BrokerUnavailable
from tests.datasets.conftest import API, API_TOKEN, brokerless_app, make_settings

SECRET = "internal detail that must not leak"


def _broker_down() -> None:
    raise BrokerUnavailable("the broker refused the connection")


def _bug() -> None:
    raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("error-bodies")
    app, ctx = brokerless_app(make_settings(tmp))
    app.add_api_route("/test/broker-down", _broker_down)
    app.add_api_route("/test/bug", _bug)
    # Exceptions are answered as 500 and re-raised for the server to log; the client here must
    # see the response, as a real client would.
    client = TestClient(
        app, headers={"Authorization": f"Bearer {API_TOKEN}"}, raise_server_exceptions=False
    )
    try:
        yield client
    finally:
        ctx.close()


CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # id, method, path, request keywords, status, error
    ("validation-body", "POST", f"{API}/datasets", {"json": {"name": 5}}, 422, "ValidationError"),
    ("validation-json", "POST", f"{API}/datasets", {"content": b"{oops"}, 422, "ValidationError"),
    ("validation-query", "GET", f"{API}/datasets/x/samples?limit=-1", {}, 422, "ValidationError"),
    ("unknown-route", "GET", f"{API}/no-such-thing", {}, 404, "NotFound"),
    ("method-not-allowed", "DELETE", "/health", {}, 405, "MethodNotAllowed"),
    ("service-not-found", "GET", f"{API}/datasets/missing", {}, 404, "NotFound"),
    (
        "unauthorized",
        "GET",
        f"{API}/datasets",
        {"headers": {"Authorization": ""}},
        401,
        "Unauthorized",
    ),
    ("broker-unavailable", "GET", "/test/broker-down", {}, 503, "BrokerUnavailable"),
    ("unexpected-exception", "GET", "/test/bug", {}, 500, "InternalServerError"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_every_error_has_one_shape(
    api: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, error: str
) -> None:
    r = api.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"detail", "error"}, body
    assert body["error"] == error
    assert body["detail"]
    assert "Traceback" not in r.text and SECRET not in r.text


def test_validation_errors_keep_the_list_of_problems(api: TestClient) -> None:
    r = api.post(f"{API}/datasets", json={"name": 5})
    problems = r.json()["detail"]
    assert isinstance(problems, list) and problems
    assert {"loc", "msg", "type"} <= set(problems[0])
    assert any(p["loc"][-1] == "name" for p in problems)


def test_headers_survive(api: TestClient) -> None:
    """The status-specific headers still come with the uniform body."""
    r = api.delete("/health")
    assert "GET" in r.headers["allow"]
    r = api.get(f"{API}/datasets", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
