"""Settings refuse default secrets; every REST route but /health needs the API token."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.app import OPENAPI_TAGS, create_app
from control_plane.core.settings import DEFAULT_SECRET, Settings
from tests.control_plane.conftest import API_TOKEN, ControlPlane


def test_default_api_token_refused_outside_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="api_token is the default secret"):
        Settings(data_dir=tmp_path, mqtt_password="a-real-password")


def test_default_mqtt_password_refused_outside_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="mqtt_password is the default secret"):
        Settings(data_dir=tmp_path, api_token="a-real-token")


def test_default_secrets_allowed_in_dev_mode(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dev_mode=True)
    assert settings.api_token.get_secret_value() == DEFAULT_SECRET


def test_default_secret_refused_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", DEFAULT_SECRET)
    monkeypatch.setenv("CONTROL_PLANE_MQTT_PASSWORD", "x" * 20)
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path)
    monkeypatch.setenv("CONTROL_PLANE_DEV_MODE", "true")
    assert Settings(data_dir=tmp_path).dev_mode


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/devices"),
        ("post", "/api/v1/devices"),
        ("get", "/api/v1/devices/dev-x"),
        ("delete", "/api/v1/devices/dev-x"),
        ("get", "/api/v1/packages"),
        ("post", "/api/v1/packages"),
        ("get", "/api/v1/deployments"),
        ("post", "/api/v1/deployments"),
    ],
)
def test_unauthenticated_calls_refused(control_plane: ControlPlane, method: str, path: str) -> None:
    api = control_plane.api
    no_token = getattr(api, method)(path, headers={"Authorization": ""})
    assert no_token.status_code == 401, no_token.text
    wrong = getattr(api, method)(path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"


def test_token_accepted_and_health_open(control_plane: ControlPlane) -> None:
    api = control_plane.api
    ok = api.get("/api/v1/devices", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert ok.status_code == 200 and ok.json() == []
    health = api.get("/health", headers={"Authorization": ""})
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "broker_connected": True}


def test_openapi_documents_bearer_auth(control_plane: ControlPlane) -> None:
    doc = control_plane.api.get("/openapi.json").json()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "/api/v1/deployments" in doc["paths"]


def test_every_openapi_tag_is_described(tmp_path: Path) -> None:
    """Each router's tag has its description in ``OPENAPI_TAGS``, and no description is stale."""
    doc = create_app(Settings(data_dir=tmp_path, dev_mode=True)).openapi()
    used = {tag for ops in doc["paths"].values() for op in ops.values() for tag in op["tags"]}
    described = {t["name"] for t in doc["tags"] if t.get("description")}
    assert used == described == {t["name"] for t in OPENAPI_TAGS}
