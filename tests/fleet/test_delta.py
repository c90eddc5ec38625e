"""Delta updates end to end: the real control plane, Mosquitto and an agent process.

One agent goes through three deployments of a model whose first layer never changes:

1. version 1 on a device holding nothing of it (its ``mlp`` shares nothing): the fixed chunks,
   all of them, plus the small chunk index it keeps for the next time;
2. version 2 (head retrained): no fixed chunk at all; exactly the content-defined chunks that
   version 1 lacks, by digest, and nothing it holds;
3. version 3, after a byte of the first layer changed on disk in every installed copy: the
   held chunk fails its digest, the delta is abandoned and the rest comes as fixed chunks; the
   install succeeds all the same.

What the device asked for is read off the broker by an observer on its ``chunks/data``.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from model_packager import cdc
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import Keys
from tests.control_plane.mqtt_probe import MqttProbe
from tests.fleet.conftest import Fleet
from tests.fleet.delta_packages import head_package
from tests.fleet.helpers import wait_reported


@dataclass
class Served:
    """ChunkData a device received, by kind (duplicates counted once)."""

    fixed: dict[int, int] = field(default_factory=dict)  # index -> bytes
    cdc: dict[bytes, int] = field(default_factory=dict)  # sha256 -> bytes
    indexes: int = 0
    errors: list[str] = field(default_factory=list)


def served(observer: MqttProbe) -> Served:
    out = Served()
    for msg in observer.drain(1.0):
        data = fleet_pb2.ChunkData.FromString(msg.payload)
        if data.error:
            out.errors.append(data.error)
        elif data.cdc_index:
            out.indexes += 1
        elif data.cdc:
            out.cdc[bytes(data.sha256)] = len(data.data)
        else:
            out.fixed[data.index] = len(data.data)
    return out


def delta_metrics(agent: AgentProcess) -> dict[str, float]:
    """The agent's ``edge_agent_delta_*`` counters, read off its metrics port as a user would."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics") as r:
        lines = r.read().decode().splitlines()
    pairs = (line.split(" ") for line in lines if line.startswith("edge_agent_delta_"))
    return {name.removeprefix("edge_agent_delta_"): float(value) for name, value in pairs}


def deploy_and_wait(fleet: Fleet, observer: MqttProbe, device: str, package: Path) -> str:
    digest = fleet.upload(package)
    dep = fleet.deploy(digest, device_id=device)
    target = fleet.wait_final(dep, [device], timeout=60)[device]
    assert target["state"] == "installed", target
    wait_reported(
        observer,
        device,
        lambda s: any(m.package_digest == digest and m.active for m in s.models),
    )
    return digest


def test_delta_update_fetches_only_missing_chunks(
    fleet: Fleet, fleet_keys: dict[str, Keys], start_fleet_agent, tmp_path: Path
) -> None:
    key = fleet_keys["trusted"].private
    pkgs = [head_package(tmp_path / "pkgs", str(v), 1, v, key) for v in (1, 2, 3)]
    bundle = fleet.register("delta-0")
    agent = start_fleet_agent(bundle).start()
    data_topic = topics.device_topic("delta-0", topics.CHUNKS_DATA)
    chunks = fleet.observer()
    chunks.subscribe(data_topic)
    reports = fleet.observer()

    # 1. Nothing held: every fixed chunk, and the chunk index (kept for next time).
    deploy_and_wait(fleet, reports, "delta-0", pkgs[0])
    first = served(chunks)
    size1 = pkgs[0].stat().st_size
    assert sum(first.fixed.values()) == size1 and not first.cdc and not first.errors
    assert first.indexes == 1
    assert delta_metrics(agent) == {
        "updates_total": 0,
        "reused_bytes_total": 0,
        "fetched_bytes_total": 0,
        "fallbacks_total": 0,
    }
    prefix = topics.device_prefix("delta-0")
    assert f"topics under {prefix}\n" in agent.log()

    # 2. Head retrained: only the chunks version 1 lacks, none of the fixed chunks.
    deploy_and_wait(fleet, reports, "delta-0", pkgs[1])
    second = served(chunks)
    held = set(cdc.chunk_file(pkgs[0]).digests)
    index2 = cdc.chunk_file(pkgs[1])
    want_count, want_bytes = cdc.missing_bytes(index2, held)
    assert not second.fixed and not second.errors and second.indexes == 1
    assert not held & set(second.cdc)  # nothing the device holds was sent again
    assert (len(second.cdc), sum(second.cdc.values())) == (want_count, want_bytes)
    size2 = pkgs[1].stat().st_size
    assert want_bytes < 0.25 * size2, (want_bytes, size2)  # the point of it all
    assert "delta of" in agent.log() and "fetched by digest" in agent.log()
    # What the device reports on its metrics port (and in its telemetry snapshots).
    after2 = delta_metrics(agent)
    assert after2["updates_total"] == 1 and after2["fallbacks_total"] == 0
    assert after2["fetched_bytes_total"] == want_bytes
    assert after2["reused_bytes_total"] == size2 - want_bytes  # the rest came from version 1

    # 3. The shared layer changed on disk in every installed copy: the delta is abandoned.
    packages = agent.workdir / "data" / "packages"
    damaged = 0
    for artifact in packages.glob("*/artifacts/*.onnx"):
        with open(artifact, "r+b") as f:
            f.seek(300_000)
            byte = f.read(1)
            f.seek(300_000)
            f.write(bytes([byte[0] ^ 0xFF]))
        damaged += 1
    assert damaged >= 1
    digest3 = deploy_and_wait(fleet, reports, "delta-0", pkgs[2])
    third = served(chunks)
    assert third.fixed, "the rest of the package came as fixed chunks"
    assert "abandoned" in agent.log() and "does not match its digest" in agent.log()
    after3 = delta_metrics(agent)
    assert after3["updates_total"] == 1 and after3["fallbacks_total"] == 1
    state = wait_reported(reports, "delta-0", lambda s: s.last_result.outcome == 2)
    assert [m.version for m in state.models if m.name == "deltamlp" and m.active] == ["3"]
    assert any(m.package_digest == digest3 for m in state.models)
