"""Fixtures for the control plane: signed test packages, a real Mosquitto broker configured from
the device registry, and an in-process control plane connected to it.

Mosquitto is required (the CI script installs it); when it is missing the fixture fails with a
clear message instead of skipping, so the ACL tests can never silently not run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.fleet.broker_config import ListenerOptions, write_broker_config
from tests.control_plane.mqtt_probe import MqttProbe

API_TOKEN = "test-token-0123456789"
MQTT_PASSWORD = "control-plane-test-password"
CHUNK_SIZE = 1024
# Test observers: identities of their own (passwd.local / acl.local) with the control plane's
# rights. They cannot share the control plane's identity: the broker binds the client id to the
# user name, so a second client with that identity would take the control plane's session over.
OBSERVER_PASSWORD = "observer-test-password"
OBSERVERS = [f"observer-{i}" for i in range(1, 9)]


# --- packages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def _keypair(folder: Path) -> Keys:
    from model_packager.signing import generate_keypair

    keys = Keys(folder / "key.pem", folder / "key.pub")
    generate_keypair(keys.private, keys.public)
    return keys


@pytest.fixture(scope="session")
def trusted_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _keypair(tmp_path_factory.mktemp("trusted-key"))


@pytest.fixture(scope="session")
def untrusted_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _keypair(tmp_path_factory.mktemp("untrusted-key"))


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real ONNX model (y = relu(x * w)), generated, never downloaded."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, path)
    return path


def build_test_package(
    model: Path, out_dir: Path, keys: Keys, version: str, name: str, description: str = ""
) -> Path:
    from model_packager.build import ArtifactInput, BuildSpec, build_package
    from model_packager.signing import load_private_key

    spec = BuildSpec(
        name=name, version=version, artifacts=[ArtifactInput(path=model)], description=description
    )
    return build_package(spec, out_dir, load_private_key(keys.private))


@pytest.fixture(scope="session")
def package_factory(
    onnx_model: Path, trusted_keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """build(version, keys=trusted, name="tiny") -> path of a signed package (cached)."""
    cache: dict[tuple[str, str, Path], Path] = {}

    def build(version: str = "1.0.0", keys: Keys | None = None, name: str = "tiny") -> Path:
        keys = keys or trusted_keys
        key = (name, version, keys.private)
        if key not in cache:
            cache[key] = build_test_package(
                onnx_model, tmp_path_factory.mktemp("pkg"), keys, version, name
            )
        return cache[key]

    return build


# --- broker ----------------------------------------------------------------------------------


def write_observers(broker_dir: Path, root: str = "edge") -> None:
    """Declare ``OBSERVERS`` in the operator's local files, read/write on the whole fleet tree."""
    from control_plane.core.credentials import hash_password
    from control_plane.fleet.broker_config import LOCAL_ACL_NAME, LOCAL_PASSWD_NAME

    broker_dir.mkdir(parents=True, exist_ok=True)
    hashed = hash_password(OBSERVER_PASSWORD)
    (broker_dir / LOCAL_PASSWD_NAME).write_text("".join(f"{o}:{hashed}\n" for o in OBSERVERS))
    acl = "".join(f"user {o}\ntopic readwrite {root}/#\n" for o in OBSERVERS)
    (broker_dir / LOCAL_ACL_NAME).write_text(acl)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        pytest.fail(
            "mosquitto is not installed: these tests need a real broker "
            "(apt-get install mosquitto; .ci/run installs it)",
            pytrace=False,
        )
    return path


@dataclass
class Mosquitto:
    process: subprocess.Popen[bytes]
    port: int
    conf: Path
    log: Path

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_mosquitto(conf: Path, port: int, log: Path) -> Mosquitto:
    binary = mosquitto_binary()
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mosquitto exited at start:\n{log.read_text()}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Mosquitto(proc, port, conf, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"mosquitto did not listen on {port}:\n{log.read_text()}", pytrace=False)


# --- control plane ---------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A control plane app on a fresh database, connected to its own Mosquitto."""

    api: TestClient
    settings: Settings
    broker: Mosquitto
    ctx: AppContext
    probes: list[MqttProbe] = field(default_factory=list)
    observers: list[MqttProbe] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.broker.port

    def register(self, name: str = "", labels: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.api.post("/api/v1/devices", json={"name": name, "labels": labels or {}})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def upload(self, path: Path) -> Any:
        with open(path, "rb") as f:
            return self.api.post("/api/v1/packages", files={"file": (path.name, f)})

    def probe(self, username: str | None, password: str | None) -> MqttProbe:
        p = MqttProbe(self.port, username, password)
        self.probes.append(p)
        return p

    def device_probe(self, registered: dict[str, Any], timeout: float = 5.0) -> MqttProbe:
        """Connect as the device, retrying while the broker rereads its password file."""
        mqtt = registered["bundle"]["mqtt"]
        deadline = time.monotonic() + timeout
        while True:
            p = self.probe(mqtt["username"], mqtt["password"])
            if p.connect():
                return p
            if time.monotonic() > deadline:
                raise AssertionError(f"device {mqtt['username']} could not connect")
            time.sleep(0.1)

    def observer(self) -> MqttProbe:
        """A client with the control plane's rights (an identity of its own, see OBSERVERS)."""
        p = self.probe(OBSERVERS[len(self.observers)], OBSERVER_PASSWORD)
        self.observers.append(p)
        assert p.connect()
        return p


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within timeout")


def make_settings(tmp: Path, trusted: Keys, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": MQTT_PASSWORD,
        "data_dir": tmp / "data",
        "trusted_keys": [trusted.public],
        "chunk_size": CHUNK_SIZE,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def control_plane(
    tmp_path: Path, trusted_keys: Keys, database_url: str | None, blob_storage: dict[str, Any]
) -> Iterator[ControlPlane]:
    port = free_port()
    broker_dir = tmp_path / "broker"
    base = make_settings(tmp_path, trusted_keys, database_url=database_url, **blob_storage)
    ctx = AppContext.from_settings(base)
    upgrade(ctx.engine)
    options = ListenerOptions(
        port=port,
        bind="127.0.0.1",
        persistence=False,
        run_as_user="root" if os.geteuid() == 0 else None,
    )
    write_observers(broker_dir)
    with ctx.sessions() as session:
        conf = write_broker_config(base, session, broker_dir, options)
    ctx.close()
    broker = start_mosquitto(conf, port, tmp_path / "mosquitto.log")
    settings = make_settings(
        tmp_path,
        trusted_keys,
        database_url=database_url,
        **blob_storage,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        broker_config_dir=broker_dir,
        broker_reload_command=f"kill -HUP {broker.process.pid}",
    )
    app = create_app(settings)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
            assert app.state.fleet.connected.wait(5), broker.log.read_text()
            cp = ControlPlane(api, settings, broker, app.state.ctx)
            try:
                yield cp
            finally:
                for p in cp.probes:
                    p.close()
    finally:
        broker.stop()


# --- brokers without a control plane ---------------------------------------------------------

DEVICE_PASSWORD = "device-test-password"


def write_identity_files(folder: Path, settings: Settings, device_ids: list[str]) -> None:
    """``passwd`` and ``acl`` for these devices (all with DEVICE_PASSWORD) and the control plane,
    rendered by broker_config as the registry would have them: no database needed."""
    from control_plane.core.credentials import hash_password
    from control_plane.fleet.broker_config import ACL_NAME, PASSWD_NAME, render_acl, render_passwd

    folder.mkdir(parents=True, exist_ok=True)
    hashed = hash_password(DEVICE_PASSWORD)
    devices = [(d, hashed) for d in device_ids]
    (folder / PASSWD_NAME).write_text(render_passwd(settings, devices))
    (folder / ACL_NAME).write_text(render_acl(settings, device_ids))


def local_options(port: int, **overrides: Any) -> ListenerOptions:
    """Listener options for a throwaway test broker on loopback."""
    values: dict[str, Any] = {
        "port": port,
        "bind": "127.0.0.1",
        "persistence": False,
        "run_as_user": "root" if os.geteuid() == 0 else None,
    }
    values.update(overrides)
    return ListenerOptions(**values)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Any]:
    """start(conf_text, port) -> Mosquitto; every broker started is stopped at teardown."""
    started: list[Mosquitto] = []

    def start(conf_text: str, port: int) -> Mosquitto:
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(conf_text)
        broker = start_mosquitto(conf, port, tmp_path / f"mosquitto-{port}.log")
        started.append(broker)
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()
