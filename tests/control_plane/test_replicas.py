"""Two real ``control-plane serve`` replicas on one PostgreSQL, one S3 store and one Mosquitto.

What they must do as one: a package uploaded through one is served by either; a deployment made
through one is published once; each chunk request is answered exactly once (MQTT shared
subscription); a training job runs on one of them. Then the replica running the job is killed
with SIGKILL: the survivor marks the job failed (its heartbeat stopped), ends the orphaned
process, and still answers every chunk request exactly once.

An online service created through one replica runs one set of agents, on that replica (its
owner), and answers through either replica's proxy; when the owner is killed with SIGKILL, the
survivor ends the orphaned agents, starts its own and the service answers again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.workers import worker_env
from control_plane.fleet.broker_config import write_broker_config
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import (
    API_TOKEN,
    MQTT_PASSWORD,
    Keys,
    Mosquitto,
    free_port,
    local_options,
    make_settings,
    start_mosquitto,
    wait_for,
)
from tests.control_plane.mqtt_probe import MqttProbe
from tests.pg import POSTGRES_ONLY
from tests.s3 import S3Server

pytestmark = POSTGRES_ONLY

REPLICAS = ["a", "b"]
SLEEPER = "import time\nprint('training', flush=True)\ntime.sleep(600)\n"


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        return httpx.request(method, self.url(path), headers=headers, timeout=30, **kw)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"replica {self.name} exited:\n{self.log.read_text()[-3000:]}")
        try:
            r = httpx.get(self.url("/health"), timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and bool(r.json()["broker_connected"])


@dataclass
class Cluster:
    replicas: dict[str, Replica]
    broker: Mosquitto
    tmp: Path
    database_url: str


def _env(tmp: Path, db: str, s3: dict[str, Any], broker: Mosquitto, keys: Keys) -> dict[str, str]:
    flat: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": MQTT_PASSWORD,
        "database_url": db,
        "mqtt_url": f"mqtt://127.0.0.1:{broker.port}",
        "broker_config_dir": tmp / "broker",
        "broker_reload_command": f"kill -HUP {broker.process.pid}",
        "trusted_keys": json.dumps([str(keys.public)]),
        "signing_key": keys.private,
        "chunk_size": 1024,
        "replica_peers": json.dumps(REPLICAS),
        "replica_heartbeat_s": 0.5,
        "replica_lease_s": 3,
        # One machine: the replicas share the training folder (uploaded code, job folders).
        "training_dir": tmp / "training",
        "dataset_import_roots": json.dumps([str(tmp / "inputs")]),
        **s3,
    }
    env = worker_env()
    env.update({f"CONTROL_PLANE_{k.upper()}": str(v) for k, v in flat.items()})
    return env


@pytest.fixture
def cluster(
    tmp_path: Path, database_url: str, s3_server: S3Server, trusted_keys: Keys
) -> Iterator[Cluster]:
    s3 = s3_server.settings(s3_server.new_bucket())
    port = free_port()
    base = make_settings(
        tmp_path / "setup",
        trusted_keys,
        database_url=database_url,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        replica_peers=REPLICAS,
        **s3,
    )
    ctx = AppContext.from_settings(base)
    upgrade(ctx.engine)
    with ctx.sessions() as session:
        conf = write_broker_config(base, session, tmp_path / "broker", local_options(port))
    ctx.close()
    broker = start_mosquitto(conf, port, tmp_path / "mosquitto.log")
    (tmp_path / "inputs").mkdir()
    env = _env(tmp_path, database_url, s3, broker, trusted_keys)
    replicas: dict[str, Replica] = {}
    try:
        for name in REPLICAS:
            http_port = free_port()
            log = tmp_path / f"replica-{name}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve"],
                env={
                    **env,
                    "CONTROL_PLANE_REPLICA_ID": name,
                    "CONTROL_PLANE_PORT": str(http_port),
                    "CONTROL_PLANE_DATA_DIR": str(tmp_path / f"data-{name}"),
                },
                stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
            )
            replicas[name] = Replica(name, proc, http_port, log)
        for replica in replicas.values():
            wait_for(replica.healthy, timeout=90, interval=0.3)
        yield Cluster(replicas, broker, tmp_path, database_url)
    finally:
        for replica in replicas.values():
            if replica.proc.poll() is None:
                replica.proc.terminate()
                try:
                    replica.proc.wait(20)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()
                    replica.proc.wait()
        broker.stop()


def _device(cluster: Cluster, bundle: dict[str, Any]) -> MqttProbe:
    mqtt = bundle["mqtt"]
    deadline = time.monotonic() + 10
    while True:  # the broker rereads its password file after the registration
        probe = MqttProbe(cluster.broker.port, mqtt["username"], mqtt["password"])
        if probe.connect():
            return probe
        probe.close()
        if time.monotonic() > deadline:
            raise AssertionError("the device could not connect")
        time.sleep(0.2)


def _answers(device: MqttProbe, device_id: str, digest: str, ids: list[str]) -> Counter[str]:
    """Send one chunk request per id; count the answers per request id."""
    for rid in ids:
        request = fleet_pb2.ChunkRequest(package_digest=digest, indexes=[0], request_id=rid)
        device.publish(
            topics.device_topic(device_id, topics.CHUNKS_REQUEST), request.SerializeToString()
        )
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + 20
    while len(counts) < len(ids) and time.monotonic() < deadline:
        try:
            msg = device.expect(timeout=1)
        except AssertionError:
            continue
        chunk = fleet_pb2.ChunkData.FromString(msg.payload)
        assert chunk.error == "" and chunk.index == 0, chunk
        counts[chunk.request_id] += 1
    for msg in device.drain(1.0):  # anything answered twice arrives meanwhile
        counts[fleet_pb2.ChunkData.FromString(msg.payload).request_id] += 1
    return counts


def _code_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.py", SLEEPER)
    return buf.getvalue()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_replicas_act_as_one_and_a_survivor_takes_over(
    cluster: Cluster, package_factory: Any
) -> None:
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    path: Path = package_factory("1.0.0")
    with open(path, "rb") as f:
        r = a.call("POST", "/api/v1/packages", files={"file": (path.name, f)})
    assert r.status_code == 201, r.text
    digest = r.json()["digest"]
    assert b.call("GET", f"/api/v1/packages/{digest}").status_code == 200

    r = a.call("POST", "/api/v1/devices", json={"name": "cam"})
    assert r.status_code == 201, r.text
    bundle, device_id = r.json()["bundle"], r.json()["device"]["id"]
    device = _device(cluster, bundle)
    device.subscribe(topics.device_topic(device_id, topics.DESIRED))
    r = b.call(
        "POST",
        "/api/v1/deployments",
        json={"package_name": "tiny", "package_version": "1.0.0", "device_id": device_id},
    )
    assert r.status_code == 201, r.text
    desired = fleet_pb2.DesiredState.FromString(
        device.expect_on(topics.device_topic(device_id, topics.DESIRED)).payload
    )
    assert [m.package_digest for m in desired.models] == [digest]  # published once, retained
    assert desired.generation == 1
    device.subscribe(topics.device_topic(device_id, topics.CHUNKS_DATA))

    first = [f"before-{i}" for i in range(12)]
    assert _answers(device, device_id, digest, first) == Counter({rid: 1 for rid in first})

    # A training job, claimed by one replica's runner.
    r = a.call("POST", "/api/v1/training/code", files={"file": ("c.zip", _code_zip())})
    assert r.status_code == 201, r.text
    body = {
        "name": "sleeper",
        "algorithm": "script",
        "framework": "tensorflow",
        "code_id": r.json()["code_id"],
        "boot_file": "train.py",
        "data_path": str(cluster.tmp / "inputs"),
    }
    r = b.call("POST", "/api/v1/training/jobs", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def running() -> Any:
        job = a.call("GET", f"/api/v1/training/jobs/{job_id}").json()
        _, pid = _job_owner(cluster, job_id)
        return (job["replica"], pid) if job["state"] == "running" and pid else None

    owner_name, pid = wait_for(running, timeout=60, interval=0.3)
    assert _job_owner(cluster, job_id)[0] == owner_name
    assert owner_name in REPLICAS
    owner = cluster.replicas[owner_name]
    survivor = b if owner is a else a
    assert _alive(pid)

    owner.proc.send_signal(signal.SIGKILL)
    owner.proc.wait(10)

    def failed() -> Any:
        got = survivor.call("GET", f"/api/v1/training/jobs/{job_id}").json()
        return got if got["state"] == "failed" else None

    ended = wait_for(failed, timeout=30, interval=0.3)
    assert f"replica {owner_name} stopped" in ended["failure_reason"]
    wait_for(lambda: not _alive(pid), timeout=10)  # the orphaned job process is gone too

    after = [f"after-{i}" for i in range(12)]
    assert _answers(device, device_id, digest, after) == Counter({rid: 1 for rid in after})
    device.close()


def _job_owner(cluster: Cluster, job_id: str) -> tuple[str | None, int | None]:
    """The replica that claimed the job and its process id, read from the shared database (the
    API shows the replica, not the process)."""
    from sqlalchemy import create_engine, select

    from control_plane.training.models import TrainingJob

    engine = create_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            query = select(TrainingJob.replica, TrainingJob.pid).where(TrainingJob.id == job_id)
            owner, pid = conn.execute(query).one()
            return owner, pid
    finally:
        engine.dispose()


def _agents(root: Path) -> dict[int, str]:
    """pid -> agent config of every edge agent process whose config lies under ``root``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").rstrip("\0")
            argv = argv.split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and "edge_agent" in argv and argv[-1].startswith(str(root)):
            found[int(entry.name)] = argv[-1]
    return found


def _infer(replica: Replica) -> httpx.Response:
    body = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]
    }
    return replica.call("POST", "/api/v1/services/mlp/v2/models/mlp/infer", json=body)


def test_one_replica_runs_a_services_agents_and_a_survivor_takes_them_over(
    cluster: Cluster, models_dir: Path
) -> None:
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    with open(models_dir / "mlp.onnx", "rb") as f:
        r = a.call(
            "POST",
            "/api/v1/models/import",
            files={"file": ("mlp.onnx", f)},
            data={"name": "mlp", "targets": '["onnx-fp32"]'},
        )
    assert r.status_code == 202, r.text

    def ready() -> Any:
        got = b.call("GET", "/api/v1/models/mlp/versions/1").json()
        assert got["state"] in ("converting", "ready"), got
        return got["state"] == "ready"

    wait_for(ready, timeout=120, interval=0.5)
    spec = {"name": "mlp", "models": [{"model": "mlp", "version": "1"}], "replicas": 2}
    r = b.call("POST", "/api/v1/services", json=spec)
    assert r.status_code == 201, r.text

    def running() -> Any:
        got = a.call("GET", "/api/v1/services/mlp").json()
        return got if got["state"] == "running" else None

    service = wait_for(running, timeout=120, interval=0.5)
    assert service["owner"] == "b"  # the replica that created it runs its agents
    agents = _agents(cluster.tmp)
    assert len(agents) == 2, agents  # one set: the other replica started none
    assert all(c.startswith(str(cluster.tmp / "data-b")) for c in agents.values()), agents
    for replica in (a, b):  # either proxy reaches them
        r = _infer(replica)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [1, 10]

    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    assert set(_agents(cluster.tmp)) == set(agents)  # the agents outlive their control plane

    def taken_over() -> Any:
        got = a.call("GET", "/api/v1/services/mlp").json()
        return got if got["owner"] == "a" and got["state"] == "running" else None

    wait_for(taken_over, timeout=120, interval=0.5)
    now = _agents(cluster.tmp)
    assert len(now) == 2 and not set(now) & set(agents), (agents, now)  # old ones ended
    assert all(c.startswith(str(cluster.tmp / "data-a")) for c in now.values()), now
    r = _infer(a)
    assert r.status_code == 200, r.text
    r = a.call("DELETE", "/api/v1/services/mlp")
    assert r.status_code == 204, r.text
    wait_for(lambda: not _agents(cluster.tmp), timeout=30)
