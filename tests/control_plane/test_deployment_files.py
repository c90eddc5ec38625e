"""The deployment guide's files are what the control plane accepts.

No container engine or systemd runs here, so ``deploy/compose.yaml`` cannot be started by the
tests; what can be checked is checked: the compose file and the nginx and systemd files parse
and agree with each other (two replicas, distinct ids, both among the peers, the proxy in front
of both), each replica's environment (with the example secrets) builds a valid ``Settings``
exactly as ``control-plane serve`` would read it, and every ``CONTROL_PLANE_*`` name that
``docs/deployment.md`` or a deployment file mentions is a real setting.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.core.settings import ENV_PREFIX, FLAT_NAMES, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GUIDE = REPO / "docs" / "deployment.md"
NAME_RE = re.compile(r"\bCONTROL_PLANE_[A-Z0-9_]*[A-Z0-9]\b")
REPLICAS = ("cp-a", "cp-b")


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # quoted, as systemd and sh both read it
            out[key] = value
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:?message}`` and ``$$``, from ``env`` (a missing name
    fails, as ``:?`` makes compose fail)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in env, f"compose needs {name}, which env.example does not give"
        return env[name]

    return re.sub(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}", one, value).replace("$$", "$")


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()  # refuses unknown CONTROL_PLANE_* names and invalid values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_runs_two_replicas_on_shared_engines(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "bucket", "broker-config", "mosquitto", "proxy"} <= set(services)
    assert set(REPLICAS) <= set(services)
    envs = [services[name]["environment"] for name in REPLICAS]
    ids = [env["CONTROL_PLANE_REPLICA_ID"] for env in envs]
    assert len(set(ids)) == 2
    for env in envs:
        assert sorted(json.loads(env["CONTROL_PLANE_REPLICA_PEERS"])) == sorted(ids)
        for shared in ("DATABASE_URL", "STORAGE_URL", "MQTT_URL", "SIGNING_KEY"):
            assert env[f"CONTROL_PLANE_{shared}"] == envs[0][f"CONTROL_PLANE_{shared}"]
    # Each replica keeps its own data volume; the agents' address is its own host name.
    volumes = [set(services[name]["volumes"]) for name in REPLICAS]
    assert len({v for v in volumes[0] ^ volumes[1] if "/var/lib/edge" in v}) == 2
    for name in REPLICAS:
        env = services[name]["environment"]
        assert env["CONTROL_PLANE_SERVICE_AGENT_HOST"] == services[name]["hostname"] == name
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert all(f"server {name}:8080" in nginx for name in REPLICAS)
    assert "/broker" in services["broker-config"]["command"]
    assert services["mosquitto"]["entrypoint"][-1].count("/broker/mosquitto.conf") == 1


def test_each_replica_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _env_file(DEPLOY / "env.example")
    for name in REPLICAS:
        raw = compose["services"][name]["environment"]
        env = {k: _interpolate(str(v), example) for k, v in raw.items()}
        settings = _settings_from(env, monkeypatch)
        assert settings.replicas.id == name.removeprefix("cp-")
        assert settings.storage.url == "s3://edge-data/prod"
        assert settings.database.url is not None and settings.database.url.startswith(
            "postgresql+psycopg://edge:"
        )
        assert settings.mqtt_identities == ["control-plane", "control-plane-a", "control-plane-b"]


def test_systemd_units_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    units = {}
    for path in sorted((DEPLOY / "systemd").glob("*.service")) + sorted(
        (DEPLOY / "systemd").glob("*.path")
    ):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        assert "Unit" in parser, path
        units[path.name] = parser
    replica = units["edge-control-plane@.service"]["Service"]
    assert replica["ExecStart"].endswith("/control-plane serve")
    assert replica["KillMode"] == "process"  # agents outlive a crash, to be adopted
    reload_path = units["edge-mosquitto-reload.path"]["Path"]
    assert reload_path["Unit"] in units
    env = {
        **_env_file(DEPLOY / "systemd" / "control-plane.env.example"),
        **_env_file(DEPLOY / "systemd" / "replica-a.env.example"),
    }
    settings = _settings_from(env, monkeypatch)
    assert settings.replicas.id == "a" and settings.replicas.peers == ["a", "b"]
    assert str(settings.mqtt.broker_config_dir) in reload_path["PathChanged"]


def test_every_setting_named_in_the_guide_and_files_exists() -> None:
    known = {ENV_PREFIX + n.upper() for n in [*FLAT_NAMES, *Settings.model_fields]}
    files = [GUIDE, DEPLOY / "compose.yaml", *sorted((DEPLOY / "systemd").iterdir())]
    seen: set[str] = set()
    for path in files:
        names = set(NAME_RE.findall(path.read_text()))
        unknown = names - known
        assert not unknown, f"{path.name} names settings that do not exist: {sorted(unknown)}"
        seen |= names
    assert len(seen) >= 20  # the guide covers the scaled settings, not a handful
