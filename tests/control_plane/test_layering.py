"""Dependency rules: the control plane never imports the agent; only the fleet codec and service
touch protobuf types; routes and services never touch MQTT."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.cli import main

PACKAGE = Path(__file__).resolve().parents[2] / "control_plane"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_control_plane_never_imports_edge_agent() -> None:
    code = (
        "import sys, control_plane.cli, control_plane.app, control_plane.fleet.service;"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'edge_agent'];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
    for path in PACKAGE.rglob("*.py"):
        assert not any(m.startswith("edge_agent") for m in _imports(path)), path


def test_protobuf_and_mqtt_stay_in_the_fleet_package() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        mods = _imports(path)
        if rel not in ("fleet/codec.py", "fleet/service.py"):
            assert "protos.gen" not in mods and not any("_pb2" in m for m in mods), rel
        if not rel.startswith("fleet/"):
            assert not any(m.startswith("paho") or m.startswith("amqtt") for m in mods), rel


def test_broker_config_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", "a-token-for-this-test")
    monkeypatch.setenv("CONTROL_PLANE_MQTT_PASSWORD", "a-password-for-this-test")
    out = tmp_path / "broker"
    assert main(["broker-config", "--out", str(out), "--port", "18830", "--bind", "127.0.0.1"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 18830 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert (out / "passwd").read_text().startswith("control-plane:$7$")
    assert "topic readwrite edge/#" in (out / "acl").read_text()
