"""EMQX's HTTP auth hooks give the same answers as the Mosquitto files, decision by decision.

A control plane (in process, no broker) with two registered devices and two replica identities
writes its Mosquitto ``passwd`` and ``acl``; EMQX-shaped requests then go to the hooks for every
identity, topic and action of a grid (the devices' own leaves, each other's, wildcards, shared
subscriptions, foreign trees), and each answer is compared with what the ACL file says, read by
this test's own parser and matcher. EMQX itself cannot run here (no package in the registries
this project installs from); its request and response bodies follow its HTTP authenticator and
authorizer documentation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.cli import main
from control_plane.core.context import AppContext
from control_plane.core.credentials import verify_password
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.devices.service import DeviceService
from control_plane.fleet.broker_config import ACL_NAME, PASSWD_NAME, write_registry_files
from control_plane.fleet.emqx import AUTHN_PATH, AUTHZ_PATH

HOOK_TOKEN = "hook-token-for-this-test-0123456789"
MQTT_PASSWORD = "control-plane-password-for-this-test"


@dataclass
class Hooks:
    api: TestClient
    passwords: dict[str, str]  # device id -> its password (shown once at registration)
    acl: dict[str, list[tuple[str, str]]]  # identity -> [(access, pattern)] from the acl file
    passwd: dict[str, str]  # identity -> hash, from the passwd file

    def ask(self, path: str, body: dict[str, str], token: str | None = HOOK_TOKEN) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.api.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        return str(r.json()["result"])


def _parse_acl(text: str) -> dict[str, list[tuple[str, str]]]:
    rules: dict[str, list[tuple[str, str]]] = {}
    user = None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            user = words[1]
            rules[user] = []
        elif len(words) == 3 and words[0] == "topic" and user is not None:
            rules[user].append((words[1], words[2]))
    return rules


def _mosquitto_allows(
    acl: dict[str, list[tuple[str, str]]], user: str, topic: str, action: str
) -> bool:
    """What Mosquitto's ACL file says: a rule whose pattern matches the topic (``+`` one level,
    ``#`` the rest) with the access the action needs; a shared subscription by its filter."""
    if action == "subscribe" and topic.startswith("$share/"):
        topic = topic.split("/", 2)[2]
    needed = {"publish": {"write", "readwrite"}, "subscribe": {"read", "readwrite"}}[action]
    for access, pattern in acl.get(user, []):
        regex = "/".join(
            "[^/]+" if level == "+" else ".*" if level == "#" else re.escape(level)
            for level in pattern.split("/")
        ).replace("/.*", "(/.*)?")
        if access in needed and re.fullmatch(regex, topic) and not topic.startswith("$"):
            return True
    return False


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[Hooks]:
    settings = Settings(
        api_token="api-token-for-this-test-0123456789",
        mqtt_password=MQTT_PASSWORD,
        data_dir=tmp_path / "data",
        replica_peers=["a", "b"],
        broker_hook_token=HOOK_TOKEN,
    )
    app = create_app(settings)
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    app.state.ctx = ctx
    passwords = {}
    with ctx.sessions() as session:
        devices = DeviceService(session, ctx)
        for name in ("cam-1", "cam-2"):
            passwords[name] = devices.register(name, {}, name).password
        write_registry_files(settings, session, tmp_path / "broker")
    acl = _parse_acl((tmp_path / "broker" / ACL_NAME).read_text())
    passwd = dict(
        line.split(":", 1) for line in (tmp_path / "broker" / PASSWD_NAME).read_text().split()
    )
    # No lifespan (no broker, no fleet channel): the hooks need only the database.
    yield Hooks(TestClient(app), passwords, acl, passwd)
    ctx.close()


def _topics() -> list[str]:
    out = []
    for device in ("cam-1", "cam-2", "cam-9"):
        for leaf in (
            "desired",
            "reported",
            "status",
            "chunks/req",
            "chunks/data",
            "telemetry",
            "events",
            "batch/jobs",
            "batch/req",
            "batch/data",
            "batch/state",
            "batch/rows",
            "other",
            "#",
            "+",
        ):
            out.append(f"edge/{device}/{leaf}")
    out += [
        "edge/#",
        "edge/+/desired",
        "edge/+/chunks/req",
        "$share/control-plane/edge/+/chunks/req",
        "$share/x/edge/cam-1/desired",
        "edge",
        "other/topic",
        "#",
        "$SYS/broker/load",
    ]
    return out


def test_every_authorization_matches_the_mosquitto_acl(hooks: Hooks) -> None:
    identities = ["control-plane", "control-plane-a", "control-plane-b", "cam-1", "cam-2"]
    assert set(identities) <= set(hooks.acl)
    allowed = denied = 0
    for user in [*identities, "stranger", ""]:
        for topic in _topics():
            for action in ("publish", "subscribe"):
                body = {"username": user, "clientid": user, "topic": topic, "action": action}
                got = hooks.ask(AUTHZ_PATH, body)
                # The generated EMQX config sets no_match = deny: "ignore" ends as a denial.
                effective = got == "allow"
                expected = _mosquitto_allows(hooks.acl, user, topic, action)
                assert effective == expected, (user, topic, action, got)
                if user not in hooks.acl:
                    assert got == "ignore", (user, topic, action, got)
                allowed += effective
                denied += not effective
    assert allowed >= 60 and denied >= 300, (allowed, denied)  # both sides well covered


def test_authorization_refuses_another_client_id_and_unknown_actions(hooks: Hooks) -> None:
    # Mosquitto replaces the client id with the user name; EMQX cannot, so the hook refuses.
    body = {"username": "cam-1", "clientid": "cam-2", "topic": "edge/cam-1/reported"}
    assert hooks.ask(AUTHZ_PATH, {**body, "action": "publish"}) == "deny"
    body["clientid"] = "cam-1"
    assert hooks.ask(AUTHZ_PATH, {**body, "action": "publish"}) == "allow"
    assert hooks.ask(AUTHZ_PATH, {**body, "action": "all"}) == "deny"


def test_authentication_matches_the_password_file(hooks: Hooks) -> None:
    for device, password in hooks.passwords.items():
        assert verify_password(password, hooks.passwd[device])  # what Mosquitto checks
        ok = {"username": device, "password": password, "clientid": device}
        assert hooks.ask(AUTHN_PATH, ok) == "allow"
        assert hooks.ask(AUTHN_PATH, {**ok, "password": password + "x"}) == "deny"
        assert hooks.ask(AUTHN_PATH, {**ok, "clientid": "someone-else"}) == "deny"
    other = hooks.passwords["cam-2"]
    assert (
        hooks.ask(AUTHN_PATH, {"username": "cam-1", "password": other, "clientid": "cam-1"})
        == "deny"
    )
    for identity in ("control-plane", "control-plane-a", "control-plane-b"):
        assert verify_password(MQTT_PASSWORD, hooks.passwd[identity])
        body = {"username": identity, "password": MQTT_PASSWORD, "clientid": identity}
        assert hooks.ask(AUTHN_PATH, body) == "allow"
        assert hooks.ask(AUTHN_PATH, {**body, "password": "wrong"}) == "deny"
    stranger = {"username": "stranger", "password": "x", "clientid": "stranger"}
    assert hooks.ask(AUTHN_PATH, stranger) == "ignore"


def test_hooks_need_their_token_and_survive_bad_bodies(hooks: Hooks) -> None:
    body = {"username": "cam-1", "password": hooks.passwords["cam-1"], "clientid": "cam-1"}
    for token in (None, "wrong", "api-token-for-this-test-0123456789"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = hooks.api.post(AUTHN_PATH, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    headers = {"Authorization": f"Bearer {HOOK_TOKEN}"}
    r = hooks.api.post(AUTHZ_PATH, content=b"{not json", headers=headers)
    assert r.status_code == 422
    assert hooks.ask(AUTHN_PATH, body) == "allow"  # still serving


def test_hooks_are_off_without_a_token(tmp_path: Path) -> None:
    settings = Settings(api_token="x" * 32, mqtt_password="y" * 32, data_dir=tmp_path / "d")
    app = create_app(settings)
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    app.state.ctx = ctx
    r = TestClient(app).post(AUTHN_PATH, json={}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 404
    ctx.close()


def test_broker_config_writes_emqx_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", "a-token-for-this-test")
    monkeypatch.setenv("CONTROL_PLANE_MQTT_PASSWORD", "a-password-for-this-test")
    out = tmp_path / "emqx"
    args = ["broker-config", "--emqx", "--hook-url", "http://cp:8080/", "--out", str(out)]
    assert main(args) == 2  # no hook token: EMQX could not call the hooks
    monkeypatch.setenv("CONTROL_PLANE_BROKER_HOOK_TOKEN", HOOK_TOKEN)
    assert main(["broker-config", "--emqx", "--out", str(out)]) == 2  # no --hook-url
    assert main([*args[:3], "ftp://cp", *args[4:]]) == 2  # not an http(s) URL
    assert main(args) == 0
    conf = (out / "emqx.conf").read_text()
    assert f'url = "http://cp:8080{AUTHN_PATH}"' in conf
    assert f'url = "http://cp:8080{AUTHZ_PATH}"' in conf
    assert "no_match = deny" in conf and f"Bearer {HOOK_TOKEN}" in conf
    assert '"topic" = "${topic}"' in conf and '"password" = "${password}"' in conf
    assert (out / "emqx.conf").stat().st_mode & 0o077 == 0
