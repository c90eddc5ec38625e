"""Without a broker URL, `serve` runs an embedded broker on loopback: the fleet channel works, and
it admits and confines clients like the generated Mosquitto config.

Each isolation check has a positive control: the refused client's legitimate counterpart gets
through, and plain amqtt (no admission) does let the takeover happen.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from amqtt.broker import Broker
from amqtt.contexts import Action
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.fleet.embedded_broker import free_port
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import API_TOKEN, MQTT_PASSWORD, Keys, make_settings, wait_for
from tests.control_plane.mqtt_probe import MqttProbe

WINDOW = 1.0


@dataclass
class Embedded:
    api: TestClient
    app: Any
    port: int
    digest: str
    passwords: dict[str, str]
    probes: list[MqttProbe]

    def probe(self, user: str | None, password: str | None = None, **kw: Any) -> MqttProbe:
        if password is None and user is not None:
            password = self.passwords.get(user, MQTT_PASSWORD)
        p = MqttProbe(self.port, user, password, **kw)
        self.probes.append(p)
        return p

    def deploy(self, device_id: str) -> None:
        body = {"package_digest": self.digest, "device_id": device_id}
        assert self.api.post("/api/v1/deployments", json=body).status_code == 201


@pytest.fixture
def embedded(tmp_path: Path, trusted_keys: Keys, package_factory: Any) -> Iterator[Embedded]:
    """A control plane on its embedded broker with devices cam-a and cam-b, each deployed to."""
    settings = make_settings(tmp_path, trusted_keys, embedded_broker_port=0)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
        assert app.state.fleet.connected.wait(5)
        url = app.state.ctx.broker_url
        assert url.startswith("mqtt://127.0.0.1:")
        with open(package_factory("1.0.0"), "rb") as f:
            digest = api.post("/api/v1/packages", files={"file": ("p", f)}).json()["digest"]
        passwords = {}
        for device_id in ("cam-a", "cam-b"):
            reg = api.post("/api/v1/devices", json={"device_id": device_id}).json()
            assert reg["bundle"]["mqtt"]["url"] == url
            passwords[device_id] = reg["bundle"]["mqtt"]["password"]
        emb = Embedded(api, app, int(url.rsplit(":", 1)[1]), digest, passwords, [])
        for device_id in passwords:
            emb.deploy(device_id)
        try:
            yield emb
        finally:
            for p in emb.probes:
                p.close()


def test_embedded_broker_serves_desired_state(embedded: Embedded) -> None:
    probe = embedded.probe("cam-a")
    assert probe.connect()
    probe.subscribe(topics.device_topic("cam-a", topics.DESIRED))
    msg = probe.expect_on(topics.device_topic("cam-a", topics.DESIRED))
    state = fleet_pb2.DesiredState.FromString(msg.payload)
    assert state.models[0].package_digest == embedded.digest


def test_embedded_broker_refuses_bad_credentials_and_foreign_client_ids(
    embedded: Embedded,
) -> None:
    desired_b = topics.device_topic("cam-b", topics.DESIRED)
    victim = embedded.probe("cam-b")
    assert victim.connect()
    victim.subscribe(desired_b)
    victim.expect_on(desired_b)  # its retained desired state

    for user, password, client_id, clean in (
        (None, None, "cam-b", True),  # anonymous
        ("nobody", "whatever", "nobody", True),  # unknown
        ("cam-a", "wrong-password", "cam-b", True),  # wrong password, cam-b's id
        ("cam-a", None, "cam-b", True),  # valid credentials, another device's id
        ("cam-a", None, "control-plane", False),  # valid, the control plane's persistent session
        ("control-plane", "wrong-password", "control-plane", False),
    ):
        probe = embedded.probe(user, password, client_id=client_id, clean_session=clean)
        assert not probe.connect(), (user, client_id)
        assert probe.reason is not None and probe.reason.value in (2, 4, 5, 133, 134, 135)
        assert probe.session_present is False

    assert not victim.disconnected.wait(WINDOW), "a refused client dropped cam-b"
    # Positive control, and proof that neither cam-b's subscription nor the control plane's
    # session was touched: a new deployment reaches cam-b through the control plane.
    assert embedded.app.state.fleet.connected.is_set()
    embedded.deploy("cam-b")
    state = fleet_pb2.DesiredState.FromString(victim.expect_on(desired_b).payload)
    assert state.generation == 2


@contextmanager
def plain_amqtt() -> Iterator[int]:
    """amqtt as it comes: accepts any user name (no password check), no admission of ours.

    Run the way EmbeddedBroker runs it: built, started and served on one loop in one thread
    (amqtt binds some futures to the thread's current loop)."""
    port = free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
    }
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    brokers: list[Broker] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        brokers.append(Broker(config, loop=loop))
        loop.run_until_complete(brokers[0].start())
        ready.set()
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(brokers[0].shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_positive_control_plain_amqtt_lets_a_refused_client_hurt_another() -> None:
    """Why admission runs before amqtt's session handling: amqtt deletes the session of a client
    id (its subscriptions) before its auth plugins refuse the newcomer. So the same refused
    CONNECT that leaves cam-b untouched on the embedded broker (above) cuts it off here."""
    with plain_amqtt() as port:
        victim = MqttProbe(port, "anyone", "x", client_id="cam-b")
        sender = MqttProbe(port, "sender", "x")
        attacker = MqttProbe(port, None, None, client_id="cam-b")  # refused: no user name
        try:
            assert victim.connect() and sender.connect()
            victim.subscribe("t")
            sender.publish("t", b"before")
            assert victim.expect_on("t").payload == b"before"
            assert not attacker.connect()
            sender.publish("t", b"after")
            cut_off = victim.drain(WINDOW) == [] or victim.disconnected.is_set()
            assert cut_off, "plain amqtt kept serving the victim: the test could see nothing"
        finally:
            for p in (attacker, sender, victim):
                p.close()


def test_embedded_broker_applies_the_acl(embedded: Embedded) -> None:
    a = embedded.probe("cam-a")
    assert a.connect()
    refused = 128
    for sub in ("#", "edge/#", "edge/+/desired", topics.device_topic("cam-b", topics.DESIRED)):
        assert a.subscribe(sub) == [refused], sub
    own = topics.device_topic("cam-a", topics.DESIRED)
    assert a.subscribe(own) == [1]  # positive control
    assert {m.topic for m in a.drain(WINDOW)} == {own}

    forged = fleet_pb2.ReportedState(device_id="cam-b", agent_version="forged")
    a.publish(topics.device_topic("cam-b", topics.REPORTED), forged.SerializeToString(), True)
    a.publish(topics.device_topic("cam-a", topics.DESIRED), b"forged desired state", True)
    mine = fleet_pb2.ReportedState(device_id="cam-a", agent_version="1.0")
    a.publish(topics.device_topic("cam-a", topics.REPORTED), mine.SerializeToString(), True)
    api = embedded.api
    wait_for(lambda: api.get("/api/v1/devices/cam-a").json()["reported"])  # positive control
    assert api.get("/api/v1/devices/cam-b").json()["reported"] is None
    assert a.drain(0.3) == []  # its forged desired state was not taken either


def test_embedded_broker_sends_no_other_device_retained_messages_at_connect(
    embedded: Embedded,
) -> None:
    """amqtt replays, at every CONNECT, the retained messages matching any filter any client
    holds: cam-b's desired state (cam-b subscribed to it) and its reported state (the control
    plane subscribes to ``edge/+/reported``) would reach cam-a without it asking."""
    desired_b = topics.device_topic("cam-b", topics.DESIRED)
    b = embedded.probe("cam-b")
    assert b.connect()
    assert b.subscribe(desired_b) == [1]
    b.expect_on(desired_b)
    reported = fleet_pb2.ReportedState(device_id="cam-b", agent_version="1.0")
    b.publish(topics.device_topic("cam-b", topics.REPORTED), reported.SerializeToString(), True)
    # Positive control: the retained report is at the broker (the control plane stored it).
    wait_for(lambda: embedded.api.get("/api/v1/devices/cam-b").json()["reported"])

    a = embedded.probe("cam-a")
    assert a.connect()
    assert a.drain(WINDOW) == []
    own = topics.device_topic("cam-a", topics.DESIRED)
    assert a.subscribe(own) == [1]
    assert {m.topic for m in a.drain(WINDOW)} == {own}


def test_embedded_broker_refuses_a_will_outside_the_device_subtree(embedded: Embedded) -> None:
    offline = fleet_pb2.DeviceStatus(state=fleet_pb2.DeviceStatus.OFFLINE).SerializeToString()
    foreign = embedded.probe("cam-a")
    assert not foreign.connect(will=(topics.device_topic("cam-b", topics.STATUS), offline))
    own = embedded.probe("cam-a")
    assert own.connect(will=(topics.device_topic("cam-a", topics.STATUS), offline))


def test_embedded_broker_confines_package_topics_to_targeted_devices(
    embedded: Embedded, package_factory: Any
) -> None:
    api, digest = embedded.api, embedded.digest
    reg = api.post("/api/v1/devices", json={"device_id": "cam-c"}).json()
    embedded.passwords["cam-c"] = reg["bundle"]["mqtt"]["password"]
    shared = topics.package_topic(digest)
    a, b, c = (embedded.probe(d) for d in ("cam-a", "cam-b", "cam-c"))
    for p in (a, b, c):
        assert p.connect()
    refused = 128
    assert a.subscribe(shared) == [1]  # cam-a and cam-b are targeted by a deployment of it
    assert b.subscribe(shared) == [1]
    for sub in (shared, "#", f"edge/{topics.PACKAGES_LEVEL}/#"):
        assert c.subscribe(sub) == [refused], sub  # cam-c is not
    # Both targeted devices pull: the control plane answers the second on the package topic.
    for device_id, p in (("cam-a", a), ("cam-b", b)):
        req = fleet_pb2.ChunkRequest(package_digest=digest, indexes=[0], request_id=device_id)
        p.publish(topics.device_topic(device_id, topics.CHUNKS_REQUEST), req.SerializeToString())
    got = fleet_pb2.ChunkData.FromString(a.expect_on(shared).payload)
    assert got.index == 0 and got.data  # positive control
    assert c.drain(WINDOW) == []

    # Revoked with the deployment: a new version supersedes the package for cam-a.
    identities = embedded.app.state.broker._identities
    with open(package_factory("2.0.0"), "rb") as f:
        v2 = api.post("/api/v1/packages", files={"file": ("p", f)}).json()["digest"]
    assert identities.may("cam-a", shared, Action.RECEIVE)
    body = {"package_digest": v2, "device_id": "cam-a"}
    assert api.post("/api/v1/deployments", json=body).status_code == 201
    assert not identities.may("cam-a", shared, Action.RECEIVE)
    assert identities.may("cam-a", topics.package_topic(v2), Action.RECEIVE)
    assert identities.may("cam-b", shared, Action.RECEIVE)  # still targeted
    assert not identities.may("cam-b", shared, Action.PUBLISH)  # and never a writer
