"""Fixtures for fleet tests: a real Mosquitto, the real control plane in-process, real agents.

The broker and control plane come from the same helpers as tests/control_plane (imported, not
copied, so both suites exercise one broker setup). Agents run as subprocesses
(``tests.agent.agent_process.AgentProcess``): this process must never import
``protos.gen.inference_pb2`` or ``edge_agent.app`` because tritonclient registers the same protobuf
package. Every agent starts from a copy of one data folder where ``mlp`` version 1 is committed,
made once per session with ``edge-agent install --offline``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.fleet.broker_config import ListenerOptions, write_broker_config
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import generate_keypair, load_private_key
from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import (
    API_TOKEN,
    MQTT_PASSWORD,
    OBSERVER_PASSWORD,
    OBSERVERS,
    Keys,
    Mosquitto,
    free_port,
    start_mosquitto,
    wait_for,
    write_observers,
)
from tests.control_plane.mqtt_probe import MqttProbe

#: Small chunks so an 800 KB package is ~200 of them: enough to cut a transfer in the middle.
CHUNK_SIZE = 4096


@dataclass(frozen=True)
class Packages:
    v1: Path  # mlp 1 (mlp.onnx), trusted key
    v2: Path  # mlp 2 (mlp_v2.onnx), trusted key
    unknown_key: Path  # mlp 3 (mlp_v2.onnx), signed by a key the devices do not trust
    models: dict[str, Path]  # which_model candidates: "v1" / "v2" -> ONNX file


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keys]:
    d = tmp_path_factory.mktemp("fleet-keys")
    out = {}
    for name in ("trusted", "unknown"):
        keys = Keys(d / f"{name}.key", d / f"{name}.pub")
        generate_keypair(keys.private, keys.public)
        out[name] = keys
    return out


@pytest.fixture(scope="session")
def packages(
    models_dir: Path, fleet_keys: dict[str, Keys], tmp_path_factory: pytest.TempPathFactory
) -> Packages:
    out = tmp_path_factory.mktemp("fleet-packages")

    def build(name: str, version: str, model: Path, key: Keys) -> Path:
        spec = BuildSpec(name=name, version=version, artifacts=[ArtifactInput(path=model)])
        return build_package(spec, out, load_private_key(key.private))

    trusted, unknown = fleet_keys["trusted"], fleet_keys["unknown"]
    return Packages(
        v1=build("mlp", "1", models_dir / "mlp.onnx", trusted),
        v2=build("mlp", "2", models_dir / "mlp_v2.onnx", trusted),
        unknown_key=build("mlp", "3", models_dir / "mlp_v2.onnx", unknown),
        models={"v1": models_dir / "mlp.onnx", "v2": models_dir / "mlp_v2.onnx"},
    )


@pytest.fixture(scope="session")
def v1_data_dir(
    packages: Packages, fleet_keys: dict[str, Keys], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A data folder with mlp 1 committed (copied for every agent)."""
    work = tmp_path_factory.mktemp("v1-template")
    config = work / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(work / "data"),
                "trusted_keys": [str(fleet_keys["trusted"].public)],
                "log_level": "WARNING",
            }
        )
    )
    cmd = [sys.executable, "-m", "edge_agent.cli", "install", "--offline", str(packages.v1)]
    result = subprocess.run([*cmd, "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "data"


# --- control plane + broker -----------------------------------------------------------------


@dataclass
class Fleet:
    """The real control plane (in-process) on a real Mosquitto, plus helpers for the tests."""

    api: TestClient
    app: Any
    ctx: AppContext
    broker: Mosquitto
    tmp: Path
    probes: list[MqttProbe] = field(default_factory=list)
    observers: int = 0

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def register(self, device_id: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.api.post("/api/v1/devices", json={"device_id": device_id, "labels": labels or {}})
        assert r.status_code == 201, r.text
        return dict(r.json()["bundle"])

    def upload(self, path: Path) -> str:
        with open(path, "rb") as f:
            r = self.api.post("/api/v1/packages", files={"file": (path.name, f)})
        assert r.status_code in (200, 201), r.text
        return str(r.json()["digest"])

    def deploy(self, digest: str, **target: Any) -> str:
        r = self.api.post("/api/v1/deployments", json={"package_digest": digest, **target})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def targets(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        r = self.api.get(f"/api/v1/deployments/{deployment_id}")
        assert r.status_code == 200, r.text
        return {t["device_id"]: t for t in r.json()["targets"]}

    def wait_final(self, deployment_id: str, devices: list[str], timeout: float = 60) -> dict:
        def final() -> dict[str, dict[str, Any]] | None:
            t = self.targets(deployment_id)
            done = all(t[d]["state"] in ("installed", "failed", "removed") for d in devices)
            return t if done else None

        try:
            return dict(wait_for(final, timeout, 0.2))
        except AssertionError:
            raise AssertionError(f"not final: {self.targets(deployment_id)}") from None

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/devices/{device_id}").json())

    def observer(self) -> MqttProbe:
        """A client with the control plane's rights: sees (and may publish to) every subtree.

        An identity of its own (tests.control_plane.conftest.OBSERVERS): the control plane's
        would take the control plane's own session over.
        """
        p = MqttProbe(self.port, OBSERVERS[self.observers], OBSERVER_PASSWORD)
        self.observers += 1
        assert p.connect()
        self.probes.append(p)
        return p

    def stop_broker(self) -> None:
        self.broker.stop()

    def start_broker(self) -> None:
        log = self.tmp / f"mosquitto-{time.monotonic_ns()}.log"
        self.broker = start_mosquitto(self.broker.conf, self.broker.port, log)
        self.ctx.settings.mqtt.broker_reload_command = f"kill -HUP {self.broker.process.pid}"


@pytest.fixture
def fleet(tmp_path: Path, fleet_keys: dict[str, Keys]) -> Iterator[Fleet]:
    from control_plane.core.settings import Settings

    port = free_port()
    broker_dir = tmp_path / "broker"
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": MQTT_PASSWORD,
        "data_dir": tmp_path / "cp",
        # The control plane accepts both keys; devices trust only "trusted", which is how a
        # package "signed by an unknown key" reaches a device through the real control plane.
        "trusted_keys": [fleet_keys["trusted"].public, fleet_keys["unknown"].public],
        "chunk_size": CHUNK_SIZE,
    }
    base = Settings(**values)
    ctx = AppContext.from_settings(base)
    upgrade(ctx.engine)
    options = ListenerOptions(
        port=port,
        bind="127.0.0.1",
        # As in production: the control plane's persistent session (and the QoS 1 telemetry
        # queued for it) survives a broker restart; without it, records the broker acknowledged
        # while the control plane was still reconnecting would be lost.
        persistence=True,
        run_as_user="root" if os.geteuid() == 0 else None,
    )
    write_observers(broker_dir)
    with ctx.sessions() as session:
        conf = write_broker_config(base, session, broker_dir, options)
    ctx.close()
    broker = start_mosquitto(conf, port, tmp_path / "mosquitto.log")
    settings = Settings(
        **values,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        broker_config_dir=broker_dir,
        broker_reload_command=f"kill -HUP {broker.process.pid}",
    )
    app = create_app(settings)
    fl: Fleet | None = None
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
            assert app.state.fleet.connected.wait(5), broker.log.read_text()
            fl = Fleet(api, app, app.state.ctx, broker, tmp_path)
            yield fl
            for p in fl.probes:
                p.close()
    finally:
        (fl.broker if fl else broker).stop()


# --- agents ----------------------------------------------------------------------------------


def fleet_section(bundle: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The agent's ``fleet`` section: the bundle's ``mqtt`` object as is, plus test timings."""
    section = dict(bundle["mqtt"])
    section.update(
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        chunk_timeout_s=3.0,
        progress_interval_s=0.5,
        telemetry_interval_s=0,
    )
    section.update(overrides)
    return section


@pytest.fixture
def start_fleet_agent(
    tmp_path: Path, fleet_keys: dict[str, Keys], v1_data_dir: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """start(bundle, env=None, fresh=True, **fleet_overrides) -> a running agent serving mlp 1."""
    agents: list[AgentProcess] = []

    def make(bundle: dict[str, Any], **fleet_overrides: Any) -> AgentProcess:
        device_id = bundle["device_id"]
        workdir = tmp_path / "agents" / device_id
        if not (workdir / "data").exists():
            shutil.copytree(v1_data_dir, workdir / "data")
        agent = AgentProcess(
            workdir,
            [fleet_keys["trusted"].public],
            device_id=device_id,
            fleet=fleet_section(bundle, **fleet_overrides),
        )
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.stop()
