"""Device registry over REST, with liveness and reported state arriving over MQTT."""

from __future__ import annotations

import time

from control_plane.core.credentials import verify_password
from control_plane.devices.models import Device
from protos import fleet_topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import ControlPlane, wait_for
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def test_register_returns_bundle_and_stores_only_a_hash(control_plane: ControlPlane) -> None:
    reg = control_plane.register("gateway 1", {"site": "north"})
    bundle = reg["bundle"]
    device_id = bundle["device_id"]
    assert reg["device"]["id"] == device_id
    assert reg["device"]["labels"] == {"site": "north"}
    assert reg["device"]["status"] == "unknown"
    mqtt = bundle["mqtt"]
    assert mqtt["url"] == control_plane.settings.mqtt.url
    assert mqtt["username"] == device_id == mqtt["client_id"]
    assert mqtt["topic_prefix"] == f"edge/{device_id}"
    assert len(mqtt["password"]) >= 24
    trusted = control_plane.settings.registry.trusted_keys[0].read_text()
    assert bundle["trusted_keys_pem"] == [trusted]

    with control_plane.ctx.sessions() as session:
        stored = session.get(Device, device_id)
        assert stored is not None
        assert mqtt["password"] not in stored.password_hash
        assert stored.password_hash.startswith("$7$")
        assert verify_password(mqtt["password"], stored.password_hash)
    # and the password file the broker reads holds the same hash, not the password (rewritten
    # just after the registration: fleet/broker_sync.py)
    line = f"{device_id}:{stored.password_hash}"
    passwd = wait_for(lambda: line in (text := _broker_file(control_plane, "passwd")) and text)
    assert mqtt["password"] not in passwd


def _broker_file(cp: ControlPlane, name: str) -> str:
    folder = cp.settings.mqtt.broker_config_dir
    assert folder is not None
    return (folder / name).read_text()


def test_list_filter_get_delete(control_plane: ControlPlane) -> None:
    a = control_plane.register("a", {"site": "north", "tier": "gold"})["device"]["id"]
    b = control_plane.register("b", {"site": "south"})["device"]["id"]
    api = control_plane.api
    assert [d["id"] for d in api.get("/api/v1/devices").json()] == [a, b]
    north = api.get("/api/v1/devices", params={"label": "site=north"}).json()
    assert [d["id"] for d in north] == [a]
    both = api.get("/api/v1/devices", params=[("label", "site=north"), ("label", "tier=gold")])
    assert [d["id"] for d in both.json()] == [a]
    assert api.get("/api/v1/devices", params={"label": "site"}).status_code == 422

    assert api.get(f"/api/v1/devices/{b}").json()["name"] == "b"
    assert api.delete(f"/api/v1/devices/{b}").status_code == 204
    assert api.get(f"/api/v1/devices/{b}").status_code == 404
    assert api.delete(f"/api/v1/devices/{b}").status_code == 404
    assert [d["id"] for d in api.get("/api/v1/devices").json()] == [a]
    wait_for(lambda: f"user {a}\n" in (acl := _broker_file(control_plane, "acl")) and acl)
    wait_for(lambda: f"user {b}\n" not in _broker_file(control_plane, "acl"))


def test_register_rejects_bad_or_duplicate_ids(control_plane: ControlPlane) -> None:
    api = control_plane.api
    assert api.post("/api/v1/devices", json={"device_id": "cam-7"}).status_code == 201
    assert api.post("/api/v1/devices", json={"device_id": "cam-7"}).status_code == 409
    for bad in ("a/b", "a+b", "#", "", "control-plane"):
        r = api.post("/api/v1/devices", json={"device_id": bad or None, "name": "x"})
        if bad:
            assert r.status_code == 422, bad


def test_liveness_and_reported_state_from_mqtt(control_plane: ControlPlane) -> None:
    reg = control_plane.register("cam")
    device_id = reg["device"]["id"]
    status_topic = fleet_topics.device_topic(device_id, fleet_topics.STATUS)
    offline = fleet_pb2.DeviceStatus(state=fleet_pb2.DeviceStatus.OFFLINE).SerializeToString()
    control_plane.device_probe(reg).close()  # waits until the broker knows the credentials
    device = control_plane.probe(
        reg["bundle"]["mqtt"]["username"], reg["bundle"]["mqtt"]["password"]
    )
    assert device.connect(will=(status_topic, offline))
    online = fleet_pb2.DeviceStatus(state=fleet_pb2.DeviceStatus.ONLINE, agent_version="0.1.0")
    device.publish(status_topic, online.SerializeToString(), retain=True)
    reported = fleet_pb2.ReportedState(
        device_id=device_id,
        agent_version="0.1.0",
        models=[
            fleet_pb2.ReportedModel(
                name="tiny",
                version="1.0.0",
                variant="onnx-fp32",
                package_digest="ab" * 32,
                active=True,
            )
        ],
        timestamp_ms=int(time.time() * 1000),
    )
    device.publish(
        fleet_topics.device_topic(device_id, fleet_topics.REPORTED),
        reported.SerializeToString(),
        retain=True,
    )
    api = control_plane.api

    def current() -> dict:  # type: ignore[type-arg]
        return dict(api.get(f"/api/v1/devices/{device_id}").json())

    got = wait_for(lambda: (d := current())["status"] == "online" and d["reported"] and d)
    assert got["reported"]["models"][0]["variant"] == "onnx-fp32"
    assert got["reported"]["agent_version"] == "0.1.0"

    # An ungraceful drop fires the Last Will: the device goes offline.
    device.client.loop_stop()
    sock = device.client.socket()
    assert sock is not None
    sock.close()  # a cut connection: no DISCONNECT packet
    wait_for(lambda: current()["status"] == "offline", timeout=60)
