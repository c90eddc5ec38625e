"""Telemetry is stored once per sequence number, whatever the redelivery."""

from __future__ import annotations

import json

from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import ControlPlane, wait_for


def _batch(device_id: str, seqs: list[int], dropped: int = 0) -> bytes:
    return fleet_pb2.TelemetryBatch(
        device_id=device_id,
        dropped=dropped,
        records=[
            fleet_pb2.TelemetryRecord(
                seq=s,
                kind="metrics",
                timestamp_ms=1_700_000_000_000 + s,
                payload_json=json.dumps({"n": s}),
            )
            for s in seqs
        ],
    ).SerializeToString()


def test_telemetry_deduplicated_by_sequence(control_plane: ControlPlane) -> None:
    reg = control_plane.register("cam")
    device_id = reg["device"]["id"]
    device = control_plane.device_probe(reg)
    topic = topics.device_topic(device_id, topics.TELEMETRY)
    api = control_plane.api
    url = f"/api/v1/devices/{device_id}/telemetry"

    device.publish(topic, _batch(device_id, [1, 2, 3]))
    device.publish(topic, _batch(device_id, [2, 3, 4]))  # redelivery overlapping the first
    device.publish(topic, _batch(device_id, [1]))  # a stale duplicate
    device.publish(topic, _batch(device_id, [7, 8], dropped=2))  # 5 and 6 were dropped on device

    records = wait_for(lambda: (r := api.get(url).json()) and r[-1]["seq"] == 8 and r)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 7, 8]
    assert [json.loads(r["payload"])["n"] for r in records] == [1, 2, 3, 4, 7, 8]
    dev = api.get(f"/api/v1/devices/{device_id}").json()
    assert (dev["telemetry_seq"], dev["telemetry_dropped"]) == (8, 2)
    assert [r["seq"] for r in api.get(url, params={"after_seq": 4}).json()] == [7, 8]

    # A batch naming another device on this device's topic is ignored as a whole.
    device.publish(topic, _batch("someone-else", [9]))
    device.publish(topic, _batch(device_id, [10]))
    wait_for(lambda: api.get(url).json()[-1]["seq"] == 10)
    assert 9 not in [r["seq"] for r in api.get(url).json()]


def test_oversized_and_overlong_batches_refused_unread_and_counted(
    control_plane: ControlPlane,
) -> None:
    """A batch over the byte or record limit is refused as a whole and counted against the
    device; the next valid batch (the positive control) is stored as usual."""
    reg = control_plane.register("flooder")
    device_id = reg["device"]["id"]
    device = control_plane.device_probe(reg)
    topic = topics.device_topic(device_id, topics.TELEMETRY)
    api = control_plane.api
    url = f"/api/v1/devices/{device_id}/telemetry"

    overlong = list(range(1, topics.MAX_TELEMETRY_BATCH_RECORDS + 2))  # one record too many
    assert len(_batch(device_id, overlong)) < topics.MAX_TELEMETRY_BATCH_BYTES
    big = fleet_pb2.TelemetryBatch(
        device_id=device_id,
        records=[
            fleet_pb2.TelemetryRecord(
                seq=1,
                kind="log",
                payload_json=json.dumps({"x": "y" * topics.MAX_TELEMETRY_BATCH_BYTES}),
            )
        ],
    ).SerializeToString()
    device.publish(topic, big)
    device.publish(topic, _batch(device_id, overlong))
    device.publish(topic, _batch(device_id, [1, 2]))

    records = wait_for(lambda: api.get(url).json())
    assert [r["seq"] for r in records] == [1, 2]
    dev = api.get(f"/api/v1/devices/{device_id}").json()
    assert dev["fleet"] == {"telemetry_batches_refused": 2, "chunk_requests_dropped": 0}
    listed = {d["id"]: d for d in api.get("/api/v1/devices").json()}
    assert listed[device_id]["fleet"]["telemetry_batches_refused"] == 2


def test_late_older_batches_are_stored(control_plane: ControlPlane) -> None:
    """A broker may deliver a device's queued batches out of order (Mosquitto does, to a client
    that reconnects to a backlog): an older batch arriving after a newer one is still stored."""
    reg = control_plane.register("reordered")
    device_id = reg["device"]["id"]
    device = control_plane.device_probe(reg)
    topic = topics.device_topic(device_id, topics.TELEMETRY)
    api = control_plane.api
    url = f"/api/v1/devices/{device_id}/telemetry"

    device.publish(topic, _batch(device_id, [4, 5]))
    wait_for(lambda: [r["seq"] for r in api.get(url).json()] == [4, 5])
    device.publish(topic, _batch(device_id, [1, 2, 3]))  # older, later
    device.publish(topic, _batch(device_id, [2, 5]))  # repeats of both
    device.publish(topic, _batch(device_id, [6]))
    records = wait_for(lambda: (r := api.get(url).json()) and r[-1]["seq"] == 6 and r)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert api.get(f"/api/v1/devices/{device_id}").json()["telemetry_seq"] == 6
