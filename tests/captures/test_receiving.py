"""Captured records reach the control plane over a real Mosquitto, chunk by chunk, from a
test-side device speaking the contract: each record is filed once per digest (a resend, even from
scratch, is STORED again without a second sample), a gap is answered PARTIAL with the first
missing chunk, a bad digest, an unknown model or a foreign device id REJECTED; the sample carries
the model's top-1 as a pre-label and the capture row its origin; a tensor record becomes a PNG
sample; the device's store status is recorded and a purge order is retained on ``captures/ctl``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from control_plane.app import create_app
from control_plane.captures.landing import image_bytes
from control_plane.captures.models import CaptureChunk
from control_plane.captures.receiver import CaptureReceiver
from control_plane.captures.service import CaptureService
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.devices.service import DeviceService
from control_plane.fleet.broker_config import ListenerOptions, write_broker_config
from control_plane.fleet.capture_channel import CaptureChannel
from control_plane.fleet.service import FleetService
from control_plane.registry.packages.service import PackageService
from protos import fleet_capture as wire
from protos import fleet_topics as topics
from tests.captures.device import CaptureDevice, as_device, meta, npy, png
from tests.control_plane.conftest import (
    API_TOKEN,
    MQTT_PASSWORD,
    OBSERVER_PASSWORD,
    OBSERVERS,
    Keys,
    free_port,
    start_mosquitto,
    wait_for,
    write_observers,
)
from tests.control_plane.mqtt_probe import MqttProbe
from tests.fleet.conftest import Fleet, Packages

API = "/api/v1"
DEVICE = "cam-cap"


def _device(fleet: Fleet) -> CaptureDevice:
    dev = as_device(fleet.port, fleet.register(DEVICE))
    fleet.probes.append(dev.probe)
    return dev


def _captures(fleet: Fleet, **params: str) -> list[dict]:
    r = fleet.api.get(f"{API}/captures", params=params)
    assert r.status_code == 200, r.text
    return list(r.json())


def test_records_are_filed_once_with_their_pre_label(fleet: Fleet, packages: Packages) -> None:
    fleet.upload(packages.v1)  # mlp 1: a model the control plane knows
    dev = _device(fleet)

    big = png(1, (640, 320), noise=True)  # several chunks
    assert wire.chunk_count(len(big)) >= 3
    digest = dev.send(big, meta(score=0.31, label="7"))
    ack = dev.ack(digest)
    assert ack.state == wire.STORED, ack
    (cap,) = _captures(fleet)
    assert cap["digest"] == digest and cap["device_id"] == DEVICE
    assert (cap["model"], cap["version"], cap["reason"]) == ("mlp", "1", "low_confidence")
    assert cap["predicted"] == "7" and abs(cap["confidence"] - 0.31) < 1e-9
    assert [p["label"] for p in cap["top_k"]] == ["7", "1"]
    assert cap["state"] == "pending" and cap["deployment_id"] == "dep-test"

    # The sample: in the model's default dataset, the image as sent, the pre-label by the model.
    ds = fleet.api.get(f"{API}/datasets/{cap['dataset_id']}").json()
    assert ds["name"] == "mlp-captures" and "7" in ds["labels"]
    sample = fleet.api.get(f"{API}/datasets/{ds['id']}/samples/{cap['sample_id']}").json()
    (ann,) = sample["annotations"]
    assert (ann["label"], ann["source"], ann["creator"]) == ("7", "model", "model:mlp:1")
    assert abs(ann["confidence"] - 0.31) < 1e-9
    body = fleet.api.get(f"{API}/datasets/{ds['id']}/samples/{cap['sample_id']}/content").content
    assert body == big

    # Exactly once by digest: a resend (first chunk only, or all) is STORED, nothing is added.
    dev.send(big, meta(score=0.31), indexes=[0])
    assert dev.ack(digest).state == wire.STORED
    dev.send(big, meta(score=0.31))
    assert dev.ack(digest).state == wire.STORED
    assert len(_captures(fleet)) == 1
    assert fleet.api.get(f"{API}/datasets/{ds['id']}").json()["sample_count"] == 1
    assert not cap["disagreement"] and cap["shadow_version"] == ""
    # Sent again with a shadow's answer it lacked (the shadow disagreed after the device had
    # captured it for low confidence): the row keeps the answer, the review queue's
    # disagreement order finds it; still one capture, one sample.
    dev.send(big, meta(score=0.31, shadow="3"))
    assert dev.ack(digest).state == wire.STORED
    (cap,) = _captures(fleet)
    assert cap["disagreement"] and cap["reason"] == "low_confidence"
    assert cap["shadow_top_k"][0]["label"] == "3"
    assert fleet.api.get(f"{API}/datasets/{ds['id']}").json()["sample_count"] == 1

    # A gap: the last chunk arrives with chunk 1 missing -> PARTIAL from 1; chunk 1 completes it.
    other = png(2, (640, 320), noise=True)
    count = wire.chunk_count(len(other))
    d2 = dev.send(other, meta(score=0.5), indexes=[0, *range(2, count)])
    ack = dev.ack(d2)
    assert (ack.state, ack.next_index) == (wire.PARTIAL, 1), ack
    dev.send(other, meta(score=0.5), indexes=[1])
    assert dev.ack(d2).state == wire.STORED
    assert len(_captures(fleet)) == 2

    # A tensor of an image's shape becomes a PNG sample of that size.
    tensor = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    d3 = dev.send(npy(tensor), meta(kind=wire.TENSOR, score=0.2))
    assert dev.ack(d3).state == wire.STORED
    cap3 = next(c for c in _captures(fleet) if c["digest"] == d3)
    assert cap3["input_kind"] == "tensor"
    s3 = fleet.api.get(f"{API}/datasets/{cap3['dataset_id']}/samples/{cap3['sample_id']}").json()
    assert (s3["width"], s3["height"], s3["media_type"]) == (28, 28, "image/png")


def test_bad_records_are_rejected_and_the_channel_keeps_serving(
    fleet: Fleet, packages: Packages
) -> None:
    fleet.upload(packages.v1)
    dev = _device(fleet)

    # Bad digest: the chunks do not hash to the digest they name.
    data = png(3, (640, 320), noise=True)
    wrong = wire.digest_of(b"something else")
    dev.send(data, meta(), digest=wrong)
    ack = dev.ack(wrong)
    assert ack.state == wire.REJECTED and "digest mismatch" in ack.reason, ack
    # Unknown model version.
    d = dev.send(png(4), meta(version="99"))
    ack = dev.ack(d)
    assert ack.state == wire.REJECTED and "unknown model mlp version 99" in ack.reason
    # A tensor that is no image.
    d = dev.send(npy(np.zeros((5, 7, 9), np.float32)), meta(kind=wire.TENSOR))
    ack = dev.ack(d)
    assert ack.state == wire.REJECTED and "not image-shaped" in ack.reason
    # A chunk naming another device than its topic's.
    other = next(iter(wire.chunks_of("someone-else", png(5), meta())))
    dev.probe.publish(topics.device_topic(DEVICE, wire.UP), wire.encode_chunk(other))
    ack = dev.ack(other.digest)
    assert ack.state == wire.REJECTED and "not the topic's" in ack.reason
    # A chunk whose shape is wrong (count does not fit the size) is refused by digest.
    bad = wire.CaptureChunk(DEVICE, wire.digest_of(b"x"), 1, 0, 3, b"x", meta())
    dev.probe.publish(topics.device_topic(DEVICE, wire.UP), wire.encode_chunk(bad))
    ack = dev.ack(bad.digest)
    assert ack.state == wire.REJECTED and "chunks, not 3" in ack.reason
    # From a device the registry does not know.
    ghost = CaptureDevice(fleet.observer(), "ghost")
    d = ghost.send(png(6), meta())
    ack = ghost.ack(d)
    assert ack.state == wire.REJECTED and "unknown device ghost" in ack.reason

    assert _captures(fleet) == []
    counts = fleet.api.get(f"{API}/captures/devices/{DEVICE}").json()
    assert counts["rejected_total"] == 4 and counts["received"] == 0
    # The channel still files a good record afterwards.
    d = dev.send(png(7), meta())
    assert dev.ack(d).state == wire.STORED
    assert len(_captures(fleet)) == 1


def test_device_status_and_purge(fleet: Fleet) -> None:
    dev = _device(fleet)
    dev.status(stored_records=3, stored_bytes=4096, captured_total=9, dropped_total=2)

    def reported() -> dict | None:
        view = fleet.api.get(f"{API}/captures/devices/{DEVICE}").json()
        return view if view["reported_at"] else None

    view = wait_for(reported, timeout=10)
    assert (view["stored_records"], view["dropped_total"], view["captured_total"]) == (3, 2, 9)

    ctl = topics.device_topic(DEVICE, wire.CONTROL)
    watcher = fleet.observer()
    r = fleet.api.post(f"{API}/captures/devices/{DEVICE}/purge", json={})
    assert r.status_code == 200, r.text
    purge_id = r.json()["purge_id"]
    assert purge_id.startswith("purge-") and r.json()["purge_before_ms"] > 0
    # Retained: a device subscribing later (offline now) still finds it.
    watcher.subscribe(ctl)
    got = wire.decode_control(watcher.expect_on(ctl, 10).payload)
    assert (got.device_id, got.purge_id) == (DEVICE, purge_id)
    assert fleet.api.post(f"{API}/captures/devices/nowhere/purge", json={}).status_code == 404


def test_image_shaped_tensors_render_to_png() -> None:
    for array in (
        np.full((1, 3, 8, 6), 0.5, np.float32),  # a batch of one, channels first
        np.full((8, 6, 3), 300, np.int32),  # channels last, clipped to 255
        np.full((8, 6, 1), 7, np.uint8),
    ):
        data, name = image_bytes(npy(array), meta(kind=wire.TENSOR))
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (6, 8) and name == "input.png", (array.shape, im.size)


def _staged(api: TestClient, digest: str) -> int:
    """Chunks of the record staged in the database (read from the app's own tables)."""
    with api.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        return len(
            session.scalars(select(CaptureChunk.index).where(CaptureChunk.digest == digest)).all()
        )


def test_a_restart_mid_record_loses_nothing(
    tmp_path: Path, fleet_keys: dict[str, Keys], packages: Packages
) -> None:
    """Chunks staged before the control plane stops complete the record after it starts again:
    the staging is in the database, not in a replica's memory."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": MQTT_PASSWORD,
        "data_dir": tmp_path / "cp",
        "trusted_keys": [fleet_keys["trusted"].public],
    }
    ctx = AppContext.from_settings(Settings(**values))
    upgrade(ctx.engine)
    write_observers(broker_dir)
    options = ListenerOptions(
        port=port, bind="127.0.0.1", run_as_user="root" if os.geteuid() == 0 else None
    )
    with ctx.sessions() as session:
        conf = write_broker_config(Settings(**values), session, broker_dir, options)
    ctx.close()
    broker = start_mosquitto(conf, port, tmp_path / "mosquitto.log")
    settings = Settings(
        **values,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        broker_config_dir=broker_dir,
        broker_reload_command=f"kill -HUP {broker.process.pid}",
    )
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    probe = MqttProbe(port, OBSERVERS[0], OBSERVER_PASSWORD)
    try:
        data = png(8, (640, 320), noise=True)
        count = wire.chunk_count(len(data))
        with TestClient(create_app(settings), headers=headers) as api:
            assert api.post(f"{API}/devices", json={"device_id": DEVICE}).status_code == 201
            with open(packages.v1, "rb") as f:
                assert api.post(f"{API}/packages", files={"file": ("p", f)}).status_code == 201
            assert probe.connect()
            dev = CaptureDevice(probe, DEVICE)
            digest = dev.send(data, meta(), indexes=list(range(count - 1)))
            wait_for(lambda: _staged(api, digest) == count - 1, timeout=10)
        # Stopped: the last chunk waits in no one's memory. Started again: it completes.
        with TestClient(create_app(settings), headers=headers) as api:
            dev.send(data, meta(), indexes=[count - 1])
            assert dev.ack(digest).state == wire.STORED
            (cap,) = api.get(f"{API}/captures").json()
            assert cap["digest"] == digest and cap["size"] == len(data)
    finally:
        probe.close()
        broker.stop()


def test_replicas_share_the_chunks_of_one_record(
    tmp_path: Path, fleet_keys: dict[str, Keys], packages: Packages
) -> None:
    """With replicas, ``captures/up`` goes through the shared subscription (each chunk to one
    replica), and two replicas' receivers on one database make one record of the chunks each
    got: the chunks alternate between them and the record is filed once."""
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": MQTT_PASSWORD,
        "data_dir": tmp_path / "cp",
        "trusted_keys": [fleet_keys["trusted"].public],
    }
    shared = Settings(**values, mqtt_url="mqtt://127.0.0.1:1", replica_id="a")
    ctx_a, ctx_b = AppContext.from_settings(shared), AppContext.from_settings(Settings(**values))
    upgrade(ctx_a.engine)
    fleet = FleetService(ctx_a, "mqtt://127.0.0.1:1")  # never started: only its filters
    channel = CaptureChannel(fleet)
    fleet.extensions.append(channel)
    try:
        up = fleet._filter("edge/+/captures/up", wire.UP)
        stat = fleet._filter("edge/+/captures/stat", wire.STATUS)
        assert up == f"$share/{shared.mqtt.username}/edge/+/captures/up"
        assert stat == "edge/+/captures/stat"  # retained: every replica, plain subscription
    finally:
        channel.stop()
    with ctx_a.sessions() as session:
        DeviceService(session, ctx_a).register(DEVICE, {}, device_id=DEVICE)
        with open(packages.v1, "rb") as f:
            PackageService(session, ctx_a).upload(f)
    data = png(9, (640, 320), noise=True)
    chunks = list(wire.chunks_of(DEVICE, data, meta()))
    assert len(chunks) >= 3
    a, b = CaptureReceiver(ctx_a), CaptureReceiver(ctx_b)
    answers = [(a if c.index % 2 == 0 else b).on_chunk(DEVICE, c) for c in chunks]
    assert [x.state if x else None for x in answers] == [None] * (len(chunks) - 1) + [wire.STORED]
    # A late duplicate chunk at either replica: held already.
    ack = b.on_chunk(DEVICE, chunks[0])
    assert ack is not None and ack.state == wire.STORED
    with ctx_b.sessions() as session:
        assert len(CaptureService(session, ctx_b).list()) == 1
    ctx_a.close()
    ctx_b.close()
