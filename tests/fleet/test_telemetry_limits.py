"""The agent never sends a TelemetryBatch the control plane would refuse.

Unit checks of the packing and shrinking against the control plane's own refusal check
(``control_plane.fleet.codec.telemetry_refusal``, the code that would refuse the batch), then one
agent on a real broker draining an outbox of many small, large and oversized records.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from control_plane.fleet.codec import telemetry_refusal
from edge_agent.config import FleetSettings
from edge_agent.fleet import codec
from edge_agent.fleet.domain import OutboxRecord, TelemetryOut
from edge_agent.fleet.outbox import Outbox
from edge_agent.metrics import METRICS
from model_packager.records import SchemaError
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import wait_for
from tests.fleet.conftest import Fleet

MAX_BYTES = topics.MAX_TELEMETRY_BATCH_BYTES
MAX_RECORDS = topics.MAX_TELEMETRY_BATCH_RECORDS
DEVICE = "cam-limits"


def _record(seq: int, payload_bytes: int, kind: str = "log") -> OutboxRecord:
    return OutboxRecord(seq, kind, 1_700_000_000_000 + seq, json.dumps({"x": "y" * payload_bytes}))


def _drain(records: list[OutboxRecord], dropped: int = 0) -> list[bytes]:
    """What the outbox loop publishes for ``records``: pack, then drop what the batch carried."""
    batches = []
    left = list(records)
    while left:
        payload, taken = codec.pack_telemetry(TelemetryOut(DEVICE, left, dropped))
        assert taken > 0, "the first record could not be sent"
        batches.append(payload)
        left = left[taken:]
    return batches


def _seqs(batch: bytes) -> list[int]:
    msg = fleet_pb2.TelemetryBatch()
    msg.ParseFromString(batch)
    return [r.seq for r in msg.records]


def _check_batches(batches: list[bytes], expected_seqs: list[int]) -> None:
    for b in batches:
        assert len(b) <= MAX_BYTES and len(_seqs(b)) <= MAX_RECORDS
        assert telemetry_refusal(b) is None
    assert [s for b in batches for s in _seqs(b)] == expected_seqs  # all, once, in order


def test_many_small_records_go_in_batches_of_at_most_500() -> None:
    records = [_record(s, 10) for s in range(1, 1202)]
    batches = _drain(records)
    assert [len(_seqs(b)) for b in batches] == [500, 500, 201]
    _check_batches(batches, list(range(1, 1202)))


def test_large_records_are_cut_by_encoded_size_and_each_batch_is_maximal() -> None:
    rng = random.Random(7)
    records = [_record(s, rng.choice([10, 3_000, 40_000, 120_000])) for s in range(1, 301)]
    batches = _drain(records, dropped=12345)
    _check_batches(batches, list(range(1, 301)))
    assert len(batches) > 10
    # Maximal: each batch plus the next record would have been over the byte limit.
    start = 0
    for b in batches[:-1]:
        n = len(_seqs(b))
        one_more = records[start : start + n + 1]
        assert len(codec.telemetry_to_proto(TelemetryOut(DEVICE, one_more, 12345))) > MAX_BYTES
        start += n


def test_a_batch_of_exactly_the_limit_is_sent() -> None:
    budget = codec.telemetry_payload_budget(DEVICE, "log")
    # One record filling the budget with the widest field values: the worst case is exact.
    widest = OutboxRecord(2**64 - 1, "log", -(2**63), "z" * budget)
    payload, taken = codec.pack_telemetry(TelemetryOut(DEVICE, [widest], 2**64 - 1))
    assert taken == 1 and len(payload) == MAX_BYTES and telemetry_refusal(payload) is None
    over = OutboxRecord(2**64 - 1, "log", -(2**63), "z" * (budget + 1))
    assert codec.pack_telemetry(TelemetryOut(DEVICE, [over], 2**64 - 1)) == (b"", 0)


def test_oversized_record_is_shrunk_at_append_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3", max_records=100)
    budget = codec.telemetry_payload_budget(DEVICE, "deployment_event")
    before = METRICS.registry.get_sample_value("edge_agent_telemetry_truncated_total") or 0.0
    event = {"deployment_id": "dep-1", "outcome": "FAILED", "reason": "r" * (2 * MAX_BYTES)}
    seqs = [
        box.append("metrics", {"n": 1}, max_payload_bytes=budget),
        box.append("deployment_event", event, max_payload_bytes=budget),
        box.append("metrics", {"n": 2}, max_payload_bytes=budget),
    ]
    assert seqs == [1, 2, 3]  # the shrunk record keeps its place in the sequence
    after = METRICS.registry.get_sample_value("edge_agent_telemetry_truncated_total")
    assert after == before + 1
    records = box.oldest(10)
    shrunk = json.loads(records[1].payload_json)
    assert shrunk == {
        "deployment_id": "dep-1",
        "outcome": "FAILED",
        "_truncated": {
            "bytes": len(json.dumps(event, separators=(",", ":"))),
            "limit": budget,
            "removed": ["reason"],
        },
    }
    assert box.dropped == 0
    _check_batches(_drain(records), [1, 2, 3])
    box.close()


def test_record_stored_too_large_is_shrunk_in_place(tmp_path: Path) -> None:
    """A record written without a budget (an outbox from before the limit) does not wedge."""
    box = Outbox(tmp_path / "outbox.sqlite3", max_records=100)
    box.append("log", {"line": "x" * MAX_BYTES})  # no budget: stored as is
    box.append("log", {"line": "after"})
    first = box.oldest(10)[0]
    assert codec.pack_telemetry(TelemetryOut(DEVICE, box.oldest(10))) == (b"", 0)
    box.shrink(first.seq, first.kind, codec.telemetry_payload_budget(DEVICE, first.kind))
    batches = _drain(box.oldest(10))
    _check_batches(batches, [1, 2])
    assert json.loads(box.oldest(1)[0].payload_json)["_truncated"]["removed"] == ["line"]
    box.close()


def test_outbox_batch_size_is_capped_at_the_protocol_limit() -> None:
    assert FleetSettings(url="mqtt://h", outbox_batch_size=MAX_RECORDS).outbox_batch_size == 500
    with pytest.raises(SchemaError, match="less than or equal to 500"):
        FleetSettings(url="mqtt://h", outbox_batch_size=MAX_RECORDS + 1)


def test_agent_drains_a_mixed_outbox_within_the_limits(fleet: Fleet, start_fleet_agent) -> None:
    """Small, large and one oversized (pre-limit) record, through a real broker: every batch on
    the wire is within both limits, none is refused, every record arrives once, in order."""
    bundle = fleet.register(DEVICE)
    agent = start_fleet_agent(bundle, outbox_batch_size=MAX_RECORDS)
    box = Outbox(agent.workdir / "data" / "fleet" / "outbox.sqlite3", max_records=100_000)
    budget = codec.telemetry_payload_budget(DEVICE, "log")
    for i in range(1500):
        box.append("metrics", {"n": i}, max_payload_bytes=budget)
        if i >= 1000 and i % 100 == 50:  # a run of small records first, then mixed
            box.append("log", {"blob": "b" * 100_000}, max_payload_bytes=budget)
    box.append("log", {"blob": "o" * (MAX_BYTES + 1)})  # no budget: as an older agent wrote it
    box.append("metrics", {"n": "last"}, max_payload_bytes=budget)
    total = len(box)
    box.close()

    observer = fleet.observer()
    topic = topics.device_topic(DEVICE, topics.TELEMETRY)
    observer.subscribe(topic)
    agent.start()
    wait_for(lambda: fleet.device(DEVICE)["telemetry_seq"] == total, timeout=30, interval=0.2)
    batches = [m.payload for m in observer.drain(0.5) if m.topic == topic]
    _check_batches(batches, list(range(1, total + 1)))
    assert [len(_seqs(b)) for b in batches[:2]] == [MAX_RECORDS] * 2  # small ones fill a batch
    assert fleet.device(DEVICE)["fleet"]["telemetry_batches_refused"] == 0

    stored = fleet.api.get(f"/api/v1/devices/{DEVICE}/telemetry", params={"limit": 10000}).json()
    assert [r["seq"] for r in stored] == list(range(1, total + 1))
    oversized = json.loads(stored[-2]["payload"])
    assert oversized["_truncated"]["removed"] == ["blob"]
    assert "cannot fit a batch" in agent.log()
    with sqlite3.connect(agent.workdir / "data" / "fleet" / "outbox.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
