"""Deployments: retained desired state readable with the device's own credentials, chunk serving,
per-device progress from reported state, supersession, group targets."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from model_packager.archive import sha256_file
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import CHUNK_SIZE, ControlPlane, wait_for
from tests.pg import BOTH_DATABASES
from tests.s3 import BOTH_STORES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def _deploy(cp: ControlPlane, **body: Any) -> dict[str, Any]:
    r = cp.api.post("/api/v1/deployments", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _desired(probe: Any, device_id: str) -> fleet_pb2.DesiredState:
    msg = probe.expect_on(topics.device_topic(device_id, topics.DESIRED))
    assert msg.retain
    return fleet_pb2.DesiredState.FromString(msg.payload)


def test_deployment_publishes_retained_desired_state(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    path: Path = package_factory("1.0.0")
    digest = control_plane.upload(path).json()["digest"]
    reg = control_plane.register("cam")
    device_id = reg["device"]["id"]
    dep = _deploy(control_plane, package_digest=digest, device_id=device_id)
    assert dep["summary"] == {"pending": 1}

    # The device connects only now: the retained desired state is waiting for it.
    device = control_plane.device_probe(reg)
    device.subscribe(topics.device_topic(device_id, topics.DESIRED))
    state = _desired(device, device_id)
    assert state.device_id == device_id
    assert state.generation == 1
    assert state.deployment_id == dep["id"]
    [model] = state.models
    data = path.read_bytes()
    assert (model.name, model.version, model.package_digest) == ("tiny", "1.0.0", digest)
    assert model.deployment_id == dep["id"]
    assert model.package_size == len(data)
    assert model.chunk_size == CHUNK_SIZE
    assert model.chunk_count == len(model.chunk_sha256) == -(-len(data) // CHUNK_SIZE)
    for i, sha in enumerate(model.chunk_sha256):
        assert sha == hashlib.sha256(data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]).digest()


@BOTH_STORES  # chunks read by range from S3 too
def test_chunk_request_gets_exactly_the_requested_chunks(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    path: Path = package_factory("1.0.0")
    data = path.read_bytes()
    digest = control_plane.upload(path).json()["digest"]
    reg = control_plane.register("cam")
    device_id = reg["device"]["id"]
    _deploy(control_plane, package_name="tiny", package_version="1.0.0", device_id=device_id)
    device = control_plane.device_probe(reg)
    device.subscribe(topics.device_topic(device_id, topics.CHUNKS_DATA))
    last = -(-len(data) // CHUNK_SIZE) - 1
    wanted = [2, 0, last]
    request = fleet_pb2.ChunkRequest(package_digest=digest, indexes=wanted, request_id="r1")
    device.publish(
        topics.device_topic(device_id, topics.CHUNKS_REQUEST), request.SerializeToString()
    )

    got = [fleet_pb2.ChunkData.FromString(device.expect().payload) for _ in wanted]
    assert [c.index for c in got] == wanted
    for c in got:
        expected = data[c.index * CHUNK_SIZE : (c.index + 1) * CHUNK_SIZE]
        assert c.error == ""
        assert c.data == expected
        assert c.sha256 == hashlib.sha256(c.data).digest()
        assert (c.package_digest, c.chunk_count, c.request_id) == (digest, last + 1, "r1")
    assert len(got[2].data) == len(data) - last * CHUNK_SIZE  # the short last chunk
    assert device.drain(0.5) == []  # nothing beyond what was asked

    # Out of range, or a package that is not deployed to this device: one error answer, no data.
    bad = fleet_pb2.ChunkRequest(package_digest=digest, indexes=[last + 1], request_id="r2")
    device.publish(topics.device_topic(device_id, topics.CHUNKS_REQUEST), bad.SerializeToString())
    err = fleet_pb2.ChunkData.FromString(device.expect().payload)
    assert err.request_id == "r2" and "out of range" in err.error and err.data == b""
    other = fleet_pb2.ChunkRequest(package_digest="f" * 64, indexes=[0], request_id="r3")
    device.publish(topics.device_topic(device_id, topics.CHUNKS_REQUEST), other.SerializeToString())
    err = fleet_pb2.ChunkData.FromString(device.expect().payload)
    assert err.request_id == "r3" and "not in the desired state" in err.error
    assert device.drain(0.3) == []


def test_reported_results_update_progress_and_new_deployment_supersedes(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    d1 = control_plane.upload(package_factory("1.0.0")).json()["digest"]
    d2 = control_plane.upload(package_factory("2.0.0")).json()["digest"]
    reg = control_plane.register("cam")
    device_id = reg["device"]["id"]
    first = _deploy(control_plane, package_digest=d1, device_id=device_id)
    device = control_plane.device_probe(reg)
    reported_topic = topics.device_topic(device_id, topics.REPORTED)

    def report(dep_id: str, outcome: int, step: str = "", reason: str = "") -> None:
        msg = fleet_pb2.ReportedState(
            device_id=device_id,
            last_result=fleet_pb2.DeploymentResult(
                deployment_id=dep_id,
                outcome=outcome,
                step=step,
                reason=reason,
                chunks_done=3,
                chunks_total=9,
            ),
        )
        device.publish(reported_topic, msg.SerializeToString(), retain=True)

    def target(dep_id: str) -> dict[str, Any]:
        body = control_plane.api.get(f"/api/v1/deployments/{dep_id}").json()
        return dict(body["targets"][0])

    report(first["id"], fleet_pb2.DeploymentResult.IN_PROGRESS, step="download")
    t = wait_for(lambda: (t := target(first["id"]))["state"] == "in_progress" and t)
    assert (t["step"], t["chunks_done"], t["chunks_total"]) == ("download", 3, 9)
    report(first["id"], fleet_pb2.DeploymentResult.INSTALLED, step="commit")
    wait_for(lambda: target(first["id"])["state"] == "installed")
    # A replayed IN_PROGRESS (processed: it is the device's stored report) does not undo it.
    report(first["id"], fleet_pb2.DeploymentResult.IN_PROGRESS, step="replay")
    device_url = f"/api/v1/devices/{device_id}"
    wait_for(
        lambda: (
            control_plane.api.get(device_url).json()["reported"]["last_result"]["step"] == "replay"
        )
    )
    assert target(first["id"])["state"] == "installed"

    second = _deploy(control_plane, package_digest=d2, device_id=device_id)
    assert target(first["id"])["state"] == "superseded"
    device.subscribe(topics.device_topic(device_id, topics.DESIRED))
    state = _desired(device, device_id)
    assert state.generation == 2
    assert [m.package_digest for m in state.models] == [d2]

    # A late result for the superseded deployment does not revive it.
    report(first["id"], fleet_pb2.DeploymentResult.FAILED, reason="late")
    report(second["id"], fleet_pb2.DeploymentResult.FAILED, step="self_test", reason="golden")
    t = wait_for(lambda: (t := target(second["id"]))["state"] == "failed" and t)
    assert (t["step"], t["reason"]) == ("self_test", "golden")
    assert target(first["id"])["state"] == "superseded"

    # The old package is no longer served to this device.
    device.subscribe(topics.device_topic(device_id, topics.CHUNKS_DATA))
    req = fleet_pb2.ChunkRequest(package_digest=d1, indexes=[0], request_id=uuid.uuid4().hex)
    device.publish(topics.device_topic(device_id, topics.CHUNKS_REQUEST), req.SerializeToString())
    assert fleet_pb2.ChunkData.FromString(device.expect().payload).error


def test_group_deployment_by_label_selector(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    path = package_factory("1.0.0")
    digest = control_plane.upload(path).json()["digest"]
    north = [control_plane.register(f"n{i}", {"site": "north"}) for i in range(2)]
    south = control_plane.register("s", {"site": "south"})
    dep = _deploy(control_plane, package_digest=digest, selector={"site": "north"})
    assert sorted(t["device_id"] for t in dep["targets"]) == sorted(
        r["device"]["id"] for r in north
    )
    assert dep["summary"] == {"pending": 2}
    for reg in north:
        probe = control_plane.device_probe(reg)
        probe.subscribe(topics.device_topic(reg["device"]["id"], topics.DESIRED))
        assert _desired(probe, reg["device"]["id"]).models[0].package_digest == sha256_file(path)
    s_id = south["device"]["id"]
    probe = control_plane.device_probe(south)
    probe.subscribe(topics.device_topic(s_id, topics.DESIRED))
    assert probe.drain(0.5) == []  # nothing desired for the south device

    none = control_plane.api.post(
        "/api/v1/deployments", json={"package_digest": digest, "selector": {"site": "east"}}
    )
    assert none.status_code == 422
    both = control_plane.api.post(
        "/api/v1/deployments",
        json={"package_digest": digest, "device_id": s_id, "selector": {"site": "x"}},
    )
    assert both.status_code == 422
    missing = control_plane.api.post(
        "/api/v1/deployments", json={"package_digest": "0" * 64, "device_id": s_id}
    )
    assert missing.status_code == 404
