"""Users and roles on the REST API: tokens, 401 vs 403, the method-derived policy and its
overrides, CSRF on cookie-authenticated writes, annotations recording their user."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.users.service import ADMIN_PASSWORD_FILE, start_users
from tests.dashboard.conftest import ADMIN_PASSWORD, API, Plane, csrf_of, make_settings, sign_in
from tests.datasets.digits import digit_png


def test_no_or_bad_credentials_are_401_with_a_challenge(plane: Plane) -> None:
    anon = plane.client()
    for r in (anon.get(f"{API}/datasets"), plane.client("nope").get(f"{API}/datasets")):
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"] == "Unauthorized"
    # A session cookie that names no session is 401 too, not an anonymous read.
    anon.cookies.set("cp_session", "forged")
    assert anon.get(f"{API}/datasets").status_code == 401


def test_roles_follow_the_method_and_the_overrides(plane: Plane) -> None:
    viewer = plane.user("vera", "viewer")
    labeller = plane.user("lena", "labeller")
    engineer = plane.user("enzo", "engineer")
    # Reads: everyone.
    for c in (viewer, labeller, engineer):
        assert c.get(f"{API}/datasets").status_code == 200
    # Writes: engineers; a valid user without the role is 403 (signing in again would not help).
    spec = {"name": "digits", "type": "image_classification", "labels": ["0", "1"]}
    for c in (viewer, labeller):
        r = c.post(f"{API}/datasets", json=spec)
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", r.text
        assert "needs engineer" in r.json()["detail"]
    r = engineer.post(f"{API}/datasets", json=spec)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    files = [
        ("files", (f"{i}.png", digit_png(i % 2, random.Random(i)), "image/png")) for i in range(2)
    ]
    r = engineer.post(f"{API}/datasets/{ds}/files", files=files)
    assert r.status_code == 200 and r.json()["imported"] == 2, r.text
    sid = engineer.get(f"{API}/datasets/{ds}/samples").json()["items"][0]["id"]
    # Labelling writes: labellers (an override), not viewers.
    url = f"{API}/datasets/{ds}/samples/{sid}/annotations"
    assert viewer.put(url, json={"annotations": [{"label": "1"}]}).status_code == 403
    r = labeller.put(url, json={"annotations": [{"label": "1", "creator": "someone-else"}]})
    assert r.status_code == 200, r.text
    # The annotation records who made it, whatever the body claimed.
    assert r.json()["annotations"][0]["creator"] == "lena"
    r = labeller.post(
        f"{API}/datasets/{ds}/annotations/bulk",
        json={"sample_ids": [sid], "op": "set", "label": "0"},
    )
    assert r.status_code == 200
    assert engineer.get(url.rsplit("/", 1)[0]).json()["annotations"][0]["creator"] == "lena"
    # A labeller can label but not deploy.
    r = labeller.post(
        f"{API}/deployments", json={"package_name": "m", "package_version": "1", "device_id": "d"}
    )
    assert r.status_code == 403
    # Users administration: admins only, reads included (an override of GET).
    for c in (viewer, labeller, engineer):
        assert c.get(f"{API}/users").status_code == 403
    assert plane.admin.get(f"{API}/users").status_code == 200


def test_the_openapi_document_names_the_overrides(plane: Plane) -> None:
    doc = plane.admin.get("/openapi.json").json()
    put = doc["paths"]["/api/v1/datasets/{dataset_id}/samples/{sample_id}/annotations"]["put"]
    assert put["x-required-role"] == "labeller"
    assert doc["paths"]["/api/v1/users"]["get"]["x-required-role"] == "admin"
    assert "x-required-role" not in doc["paths"]["/api/v1/deployments"]["post"]


def test_tokens_are_per_user_shown_once_and_revocable(plane: Plane) -> None:
    c = plane.user("tom", "engineer")
    me = c.get(f"{API}/users/me").json()
    assert (me["username"], me["role"]) == ("tom", "engineer")
    r = c.post(f"{API}/users/me/tokens", json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    listed = c.get(f"{API}/users/me/tokens").json()
    assert {t["name"] for t in listed} == {"t", "ci"}
    assert all("token" not in t for t in listed)
    second = plane.client(created["token"])
    assert second.get(f"{API}/users/me").json()["username"] == "tom"
    assert second.delete(f"{API}/users/me/tokens/{created['id']}").status_code == 204
    assert second.get(f"{API}/users/me").status_code == 401
    # The database keeps only a digest of each token.
    with plane.ctx.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_hash FROM user_api_tokens")]
    assert created["token"] not in stored and all(len(h) == 64 for h in stored)


def test_role_changes_and_disabling_take_effect_at_once(plane: Plane) -> None:
    c = plane.user("dora", "viewer")
    spec = {"name": "x", "type": "image_classification"}
    assert c.post(f"{API}/datasets", json=spec).status_code == 403
    r = plane.admin.patch(f"{API}/users/dora", json={"role": "engineer"})
    assert r.status_code == 200 and r.json()["role"] == "engineer"
    assert c.post(f"{API}/datasets", json=spec).status_code == 201
    assert plane.admin.patch(f"{API}/users/dora", json={"disabled": True}).status_code == 200
    assert c.get(f"{API}/datasets").status_code == 401
    # The last active admin cannot be demoted, disabled or deleted; bad input changes nothing.
    r = plane.admin.patch(f"{API}/users/admin", json={"role": "viewer"})
    assert r.status_code == 409
    assert (
        plane.admin.post(f"{API}/users", json={"username": "a b", "password": "x"}).status_code
        == 422
    )
    r = plane.admin.post(f"{API}/users", json={"username": "dora", "password": "password-1"})
    assert r.status_code == 409
    assert [u["username"] for u in plane.admin.get(f"{API}/users").json()] == ["admin", "dora"]


def test_cookie_writes_need_the_csrf_token(plane: Plane) -> None:
    c = plane.client()
    csrf = sign_in(c, "admin", ADMIN_PASSWORD)
    spec = {"name": "csrf", "type": "image_classification"}
    r = c.post(f"{API}/datasets", json=spec)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = c.post(f"{API}/datasets", json=spec, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    assert c.get(f"{API}/datasets").json() == []  # nothing was created
    r = c.post(f"{API}/datasets", json=spec, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    # Signing out ends the session server-side: the old cookie no longer works.
    cookie = c.cookies.get("cp_session")
    r = c.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    stale = plane.client()
    stale.cookies.set("cp_session", cookie)
    assert stale.get(f"{API}/datasets").status_code == 401


def test_sessions_cookie_flags_and_wrong_passwords(plane: Plane) -> None:
    c = plane.client()
    c.get("/ui/login")
    token = c.cookies.get("cp_login")
    r = c.post(
        "/ui/login",
        data={"username": "admin", "password": "wrong-password", "login_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 401 and "wrong user name or password" in r.text
    r = c.post(
        "/ui/login", data={"username": "admin", "password": ADMIN_PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 403  # no sign-in form token: a forged cross-site sign-in
    c.get("/ui/login")
    r = c.post(
        "/ui/login",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "login_token": c.cookies.get("cp_login"),
            "next": "https://evil.example/",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert "cp_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert csrf_of(c)


def test_bootstrap_admin_gets_a_one_time_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_password=None, admin_username="root")
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    password = start_users(ctx)
    assert password and start_users(ctx) is None  # once
    path = settings.data_dir / ADMIN_PASSWORD_FILE
    assert path.read_text().strip() == password
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    app = create_app(settings)
    app.state.ctx = ctx
    c = TestClient(app)
    csrf = sign_in(c, "root", password)
    # Every page but the account page sends the user to choose a password first.
    r = c.get("/ui/datasets", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/account")
    body = {"current_password": password, "new_password": "a-new-password"}
    r = c.post(f"{API}/users/me/password", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["must_change_password"] is False
    assert c.get("/ui/datasets").status_code == 200
    # The settings' token stays the bootstrap admin's.
    me = TestClient(
        app, headers={"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    )
    assert me.get(f"{API}/users/me").json()["username"] == "root"
    ctx.close()
