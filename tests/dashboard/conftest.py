"""Fixtures for users and the dashboard: an in-process control plane without a broker.

Like the dataset tests, the app's lifespan (fleet channel, embedded broker) is not entered; the
context is built here, migrated, and given the users domain (``start_users``), which is all the
lifespan does for authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.users.service import start_users

API = "/api/v1"
SHARED_TOKEN = "dashboard-test-token-0123456789"
ADMIN_PASSWORD = "admin-password-for-tests"


@dataclass
class Plane:
    app: FastAPI
    ctx: AppContext
    settings: Settings

    def client(self, token: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return TestClient(self.app, headers=headers)

    @property
    def admin(self) -> TestClient:
        return self.client(SHARED_TOKEN)

    def user(self, name: str, role: str, password: str = "password-123") -> TestClient:
        """A new user with this role; a client holding their own API token."""
        r = self.admin.post(
            f"{API}/users", json={"username": name, "password": password, "role": role}
        )
        assert r.status_code == 201, r.text
        token = self.login_token(name, password)
        return self.client(token)

    def login_token(self, name: str, password: str) -> str:
        """An API token of the user, made through a dashboard session (cookie + CSRF)."""
        c = self.client()
        csrf = sign_in(c, name, password)
        r = c.post(f"{API}/users/me/tokens", json={"name": "t"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def sign_in(client: TestClient, name: str, password: str) -> str:
    """Sign in through the dashboard's form; the session's CSRF token (from the page)."""
    client.get("/ui/login")
    form = {"username": name, "password": password, "login_token": client.cookies.get("cp_login")}
    r = client.post("/ui/login", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    import re

    page = client.get("/ui/account").text
    m = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m, page[:500]
    return m.group(1)


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_token": SHARED_TOKEN,
        "mqtt_password": "dashboard-mqtt-password",
        "admin_password": ADMIN_PASSWORD,
        "data_dir": tmp / "data",
        "trusted_keys": [],
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    start_users(ctx)
    app.state.ctx = ctx
    try:
        yield Plane(app, ctx, settings)
    finally:
        ctx.close()
