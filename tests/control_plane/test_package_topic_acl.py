"""Shared package topics are confidential to the devices a deployment targets.

Real Mosquitto with the generated ACL, rewritten and reloaded by the control plane on every
deployment. Each "receives nothing" has a positive control in the same window: a targeted device
does receive the same messages, so silence cannot pass because nothing was sent.
"""

from __future__ import annotations

import time
from typing import Any

from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import ControlPlane
from tests.control_plane.mqtt_probe import MqttProbe

WINDOW = 1.0


def _deploy(cp: ControlPlane, digest: str, device_id: str) -> None:
    r = cp.api.post("/api/v1/deployments", json={"package_digest": digest, "device_id": device_id})
    assert r.status_code == 201, r.text


def _until_received(sender: MqttProbe, topic: str, receiver: MqttProbe, timeout: float = 5) -> None:
    """Publish on ``topic`` until ``receiver`` gets one: the broker has reread its ACL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.publish(topic, b"probe")
        if any(m.topic == topic for m in receiver.drain(0.2)):
            return
    raise AssertionError(f"nothing arrived on {topic}")


def test_only_targeted_devices_read_a_package_topic(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    cp = control_plane
    v1 = cp.upload(package_factory("1.0.0")).json()["digest"]
    v2 = cp.upload(package_factory("2.0.0")).json()["digest"]
    regs = {name: cp.register(name) for name in ("a", "b", "outsider")}
    ids = {name: reg["device"]["id"] for name, reg in regs.items()}
    _deploy(cp, v1, ids["a"])
    _deploy(cp, v1, ids["b"])
    _deploy(cp, v2, ids["outsider"])  # a registered device with deployments of its own
    acl = (cp.settings.mqtt.broker_config_dir / "acl").read_text()  # type: ignore[operator]
    assert f"topic read {topics.package_topic(v1)}" in acl

    probes = {name: cp.device_probe(reg) for name, reg in regs.items()}
    topic1, topic2 = topics.package_topic(v1), topics.package_topic(v2)
    for p in probes.values():
        p.subscribe(topic1)
    for sub in ("#", "edge/#", f"edge/{topics.PACKAGES_LEVEL}/#", "edge/+/+"):
        probes["outsider"].subscribe(sub)  # SUBACKed by Mosquitto; delivery is what counts
    probes["outsider"].drain(0.3)  # its own retained messages, if any
    sender = cp.observer()

    # 1. Published by the broker's sender identity: a and b get it, the outsider nothing.
    _until_received(sender, topic1, probes["a"])
    for n in range(5):
        sender.publish(topic1, f"chunk {n}".encode())
    assert len([m for m in probes["b"].drain(WINDOW) if m.topic == topic1]) >= 5
    assert probes["outsider"].drain(0.2) == []
    probes["a"].drain(0.2)

    # 2. Through the control plane: a and b ask for the same chunks; the second request is
    # answered on the package topic (both are pulling), which the outsider never receives.
    for name in ("a", "b"):
        req = fleet_pb2.ChunkRequest(package_digest=v1, indexes=[0, 1], request_id=name)
        probes[name].publish(
            topics.device_topic(ids[name], topics.CHUNKS_REQUEST), req.SerializeToString()
        )
    got_a = probes["a"].drain(WINDOW)
    shared = [fleet_pb2.ChunkData.FromString(m.payload) for m in got_a if m.topic == topic1]
    assert sorted(c.index for c in shared) == [0, 1]  # positive control: chunks really flowed
    assert cp.api.app.state.fleet.fanout.counts["shared"] >= 2  # type: ignore[attr-defined]
    assert probes["outsider"].drain(0.2) == []

    # 3. Revoked with the deployment: a moves to v2 (v1 superseded for it). The ACL reload that
    # grants v2 to a is the one that revokes v1: once v2 flows to a, v1 must not.
    _deploy(cp, v2, ids["a"])
    probes["a"].subscribe(topic2)
    _until_received(sender, topic2, probes["a"])
    probes["b"].drain(0.2)
    for n in range(5):
        sender.publish(topic1, f"after {n}".encode())
    assert len([m for m in probes["b"].drain(WINDOW) if m.topic == topic1]) == 5  # still granted
    assert [m.topic for m in probes["a"].drain(0.2)] == []
    assert [m.topic for m in probes["outsider"].drain(0.2) if m.topic == topic1] == []


def test_emqx_hook_grants_package_topics_as_the_acl_does(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    """The EMQX authorization hook decides package topics from the same grants as the Mosquitto
    ACL file: the packages in each device's desired state, revoked when superseded."""
    from control_plane.fleet.emqx import authorize

    cp = control_plane
    v1 = cp.upload(package_factory("1.0.0")).json()["digest"]
    v2 = cp.upload(package_factory("2.0.0")).json()["digest"]
    ids = {name: cp.register(name)["device"]["id"] for name in ("a", "outsider")}
    _deploy(cp, v1, ids["a"])

    def decisions() -> dict[tuple[str, str, str], str]:
        out = {}
        with cp.ctx.sessions() as session:
            for device in ids.values():
                for digest in (v1, v2):
                    topic = topics.package_topic(digest)
                    for action in ("subscribe", "publish"):
                        out[(device, digest, action)] = authorize(
                            cp.settings, session, device, device, topic, action
                        )
        return out

    def acl_reads(device: str, digest: str) -> bool:
        acl = (cp.settings.mqtt.broker_config_dir / "acl").read_text()  # type: ignore[operator]
        block = acl.split(f"user {device}\n", 1)[1].split("\n\n", 1)[0]
        return f"topic read {topics.package_topic(digest)}" in block

    got = decisions()
    assert got[(ids["a"], v1, "subscribe")] == "allow"
    assert got[(ids["a"], v1, "publish")] == "deny"  # read only
    assert got[(ids["a"], v2, "subscribe")] == "deny"
    assert got[(ids["outsider"], v1, "subscribe")] == "deny"
    for (device, digest, action), result in got.items():
        if action == "subscribe":
            assert (result == "allow") == acl_reads(device, digest), (device, digest)

    _deploy(cp, v2, ids["a"])  # v1 superseded for a: its grant goes, v2's comes (the hook
    # reads the deployments, so no file rewrite is waited for)
    got = decisions()
    assert got[(ids["a"], v1, "subscribe")] == "deny"
    assert got[(ids["a"], v2, "subscribe")] == "allow"
