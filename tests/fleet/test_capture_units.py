"""The capture building blocks that need no broker: store, decision, uploader protocol."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from control_plane.fleet.broker_config import device_access
from edge_agent.capture import Capturer, Override
from edge_agent.capture.policy import ModelCapture, decide, top1
from edge_agent.capture.store import CaptureStore
from edge_agent.capture.uploader import CaptureUploader
from edge_agent.config import CaptureSettings
from protos import fleet_capture as fc


def _meta(ms: int = 1000, reason: str = fc.LOW_CONFIDENCE) -> fc.CaptureMeta:
    return fc.CaptureMeta("m", "1", reason, ms, "input", fc.TENSOR, fc.NPY_MEDIA_TYPE)


def test_store_keeps_quotas_dedups_and_survives_a_restart(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, max_records=3, max_bytes=1 << 20)
    for n in range(5):
        assert store.put(bytes([n]) * 100, _meta(1000 + n))
    assert not store.put(bytes([4]) * 100, _meta(2000))  # the same input: kept once
    c = store.counters()
    assert (c.stored_records, c.captured_total, c.dropped_total) == (3, 5, 2)
    kept = [e.digest for e in store.oldest(10)]
    assert kept == [fc.digest_of(bytes([n]) * 100) for n in (2, 3, 4)]  # oldest dropped first
    (tmp_path / ".tmp-abc-123").write_bytes(b"half a record")  # what a crash leaves
    store.save()
    again = CaptureStore(tmp_path, max_records=3, max_bytes=1 << 20)
    assert [e.digest for e in again.oldest(10)] == kept
    assert again.counters().dropped_total == 2
    assert not (tmp_path / ".tmp-abc-123").exists()
    meta, data = again.read(again.oldest(1)[0]) or (b"", b"")
    assert data == bytes([2]) * 100 and fc.decode_meta(meta).captured_at_ms == 1002


def test_a_shadow_answer_joins_a_record_held_for_another_reason(tmp_path: Path) -> None:
    from edge_agent.capture.writer import CaptureWriter

    store = CaptureStore(tmp_path, max_records=10, max_bytes=1 << 20)
    data = b"x" * 64
    assert store.put(data, _meta(1000))
    digest = fc.digest_of(data)
    answer = (fc.Prediction(3, "3", 0.8),)
    shadowed = fc.CaptureMeta(
        "m", "1", fc.DISAGREEMENT, 1001, "input", fc.TENSOR, fc.NPY_MEDIA_TYPE,
        shadow_version="2", shadow_top_k=answer,
    )  # fmt: skip
    assert store.add_shadow(digest, shadowed)
    assert not store.add_shadow(digest, shadowed)  # once
    assert not store.add_shadow(fc.digest_of(b"other"), shadowed)  # not held
    raw, held = store.read(store.oldest(1)[0]) or (b"", b"")
    meta = fc.decode_meta(raw)
    assert held == data and meta.reason == fc.LOW_CONFIDENCE  # the first trigger stays
    assert (meta.shadow_version, meta.shadow_top_k) == ("2", answer)
    assert store.counters().stored_records == 1 and not list(tmp_path.glob(".tmp-*"))

    # The writer does it when a shadow disagrees on an input held for low confidence.
    from edge_agent.capture.record import Pending

    writer = CaptureWriter(store, 4)
    written = threading.Semaphore(0)
    writer.on_written = written.release
    writer.start()
    x = np.arange(12, dtype=np.float32).reshape(1, 12)
    setup = _setup(below_confidence=0.9, on_disagreement=True)
    live, other = np.array([1.0, 0.9, 0.8], np.float32), np.array([0.0, 0.0, 5.0], np.float32)
    common = (setup, "m", "1")
    writer.offer(Pending(*common, fc.LOW_CONFIDENCE, 5, "FP32", (1, 12), x, 0, live))
    writer.offer(Pending(*common, fc.DISAGREEMENT, 6, "FP32", (1, 12), x, 0, live, "2", other))
    assert written.acquire(timeout=10) and written.acquire(timeout=10)
    writer.stop()
    entry = next(e for e in store.oldest(10) if e.digest != digest)
    meta = fc.decode_meta((store.read(entry) or (b"", b""))[0])
    assert (meta.reason, meta.captured_at_ms, meta.shadow_version) == (fc.LOW_CONFIDENCE, 5, "2")
    assert meta.shadow_top_k[0].index == 2 and meta.top_k[0].index == 0
    assert writer.duplicates == 1


def test_store_byte_quota_and_a_purge_once_per_id(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, max_records=100, max_bytes=1000)
    for n in range(4):
        store.put(bytes([n]) * 300, _meta(1000 + n))
    c = store.counters()
    assert c.stored_bytes <= 1000 and c.stored_records == 2 and c.dropped_total == 2
    assert store.purge("p1", 1003) == 1  # only the record captured before 1003
    assert store.purge("p1", 5000) is None  # applied already: not again
    assert CaptureStore(tmp_path, 100, 1000).purge("p1", 5000) is None  # across restarts
    assert store.counters().stored_records == 1


def test_store_removes_a_record_whose_data_no_longer_matches(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, 10, 1 << 20)
    store.put(b"x" * 50, _meta())
    entry = store.oldest(1)[0]
    entry.path.write_bytes(entry.path.read_bytes()[:-1] + b"y")
    assert store.read(entry) is None and store.counters().stored_records == 0


def _setup(**policy: object) -> ModelCapture:
    return ModelCapture(fc.CapturePolicy(enabled=True, **policy), "logits", False, (), "x", False)  # type: ignore[arg-type]


def test_decision_per_row() -> None:
    sure, unsure = [10.0, 0.0, 0.0], [1.0, 0.9, 0.8]
    scores = np.array([sure, unsure, sure], dtype=np.float32)
    picked = decide(_setup(below_confidence=0.6), False, scores, 3)
    assert [(r, why) for r, why, _ in picked] == [(1, fc.LOW_CONFIDENCE)]
    kept = picked[0][2]
    assert kept is not None and kept.tolist() == pytest.approx(unsure)  # raw, for the writer
    # top-1 of the logits without a softmax: 1 / sum(exp(x - max)).
    assert top1(_setup(), scores.reshape(3, -1))[1] == pytest.approx(
        1 / np.exp(np.array(unsure) - 1.0).sum()
    )
    # Scores that are probabilities already are read as they are.
    dist = np.array([[0.5, 0.3, 0.2]], dtype=np.float32)
    assert decide(_setup(below_confidence=0.6), False, dist, 1)[0][2] is not None
    assert decide(_setup(below_confidence=0.4), False, dist, 1) == []
    # Asked by the client: every row, only with on_request.
    assert decide(_setup(below_confidence=0.1), True, scores, 3) == []
    asked = decide(_setup(on_request=True), True, scores, 3)
    assert [why for _, why, _ in asked] == [fc.REQUESTED] * 3
    assert len(decide(_setup(sample_fraction=1.0), False, scores, 3)) == 3
    assert decide(_setup(sample_fraction=1.0), False, None, 2)[1][2] is None  # no scores


class _Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.up = True

    def publish(self, topic: str, payload: bytes, retain: bool) -> tuple[int, int] | None:
        if not self.up:
            return None
        self.sent.append((topic, payload, retain))
        return (1, len(self.sent))

    def chunks(self) -> list[fc.CaptureChunk]:
        return [fc.decode_chunk(p) for t, p, _ in self.sent if t.endswith(fc.UP)]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_uploader_follows_the_acks(tmp_path: Path) -> None:
    async def run() -> None:
        store = CaptureStore(tmp_path, 100, 1 << 26)
        big = bytes(range(256)) * (fc.CHUNK_BYTES // 256) * 2 + b"end"  # three chunks
        small = b"small record"
        store.put(big, _meta(1))
        store.put(small, _meta(2))
        wire, connected = _Wire(), asyncio.Event()
        settings = CaptureSettings(upload_window=1, status_interval_s=0)
        up = CaptureUploader(settings, store, "dev", "edge/dev", wire.publish, connected)
        connected.set()
        up.start()
        await _settle()
        assert [c.index for c in wire.chunks()] == [0, 1, 2]  # window 1: the oldest only
        d_big, d_small = fc.digest_of(big), fc.digest_of(small)
        ack = "edge/dev/" + fc.ACK
        wire.sent.clear()
        up.on_message(ack, fc.encode_ack(fc.CaptureAck(d_big, fc.PARTIAL, 2)))
        await _settle()
        assert [(c.digest, c.index) for c in wire.chunks()] == [(d_big, 2)]  # from next_index
        wire.sent.clear()
        up.on_message(ack, fc.encode_ack(fc.CaptureAck(d_big, fc.STORED)))
        await _settle()
        assert not store.has(d_big) and [c.digest for c in wire.chunks()] == [d_small]
        # A new session: what is in flight goes again.
        wire.sent.clear()
        up.on_connected()
        await _settle()
        assert [c.digest for c in wire.chunks()] == [d_small]
        up.on_message(ack, fc.encode_ack(fc.CaptureAck(d_small, fc.REJECTED, reason="no")))
        up.on_message(ack, fc.encode_ack(fc.CaptureAck(d_small, fc.STORED)))  # a late repeat
        await _settle()
        c = store.counters()
        assert (c.stored_records, c.uploaded_total, c.rejected_total) == (0, 1, 1)
        status = [fc.decode_status(p) for t, p, r in wire.sent if t.endswith(fc.STATUS) and r]
        assert status and status[-1].stored_records == 0 and status[-1].uploaded_total == 1
        await up.stop()

    asyncio.run(run())


def test_the_device_acl_grants_the_capture_leaves() -> None:
    access = device_access("dev-1")
    assert access["edge/dev-1/captures/up"] == "write"
    assert access["edge/dev-1/captures/stat"] == "readwrite"
    assert access["edge/dev-1/captures/ack"] == "read"
    assert access["edge/dev-1/captures/ctl"] == "read"


def _served(capture: dict | None) -> SimpleNamespace:
    """The parts of a ServedModel that resolving a policy reads (no runtime needed)."""
    spec = SimpleNamespace(name="logits", datatype="FP32", shape=(-1, 10))
    manifest = SimpleNamespace(capture=capture, labels=None, output_specs=lambda: [spec])
    return SimpleNamespace(
        name="digits",
        version="1",
        manifest=manifest,
        hooks=None,
        inputs=[SimpleNamespace(name="input")],
        processing=SimpleNamespace(pre=None, post=None),
    )


def test_the_deployments_policy_replaces_the_packages_and_is_kept(tmp_path: Path) -> None:
    served = _served({"below_confidence": 0.5})
    capturer = Capturer(CaptureSettings(), tmp_path)
    own = capturer.setup_for(served)  # type: ignore[arg-type]
    assert own is not None and own.policy.below_confidence == 0.5 and own.scores == "logits"
    told = fc.CapturePolicy(enabled=True, on_request=True)
    capturer.set_overrides([("digits", "1", Override("dep-9", told))])
    setup = capturer.setup_for(served)  # type: ignore[arg-type]
    assert setup is not None and setup.policy == told and setup.deployment_id == "dep-9"
    # Kept across a restart (an offline device keeps capturing as told).
    again = Capturer(CaptureSettings(), tmp_path).setup_for(served)  # type: ignore[arg-type]
    assert again is not None and again.policy == told
    # A deployment that turns it off, and one that says nothing (the package's block again).
    capturer.set_overrides([("digits", "1", Override("dep-10", fc.CapturePolicy()))])
    assert capturer.setup_for(served) is None  # type: ignore[arg-type]
    capturer.set_overrides([("digits", "1", Override("dep-11", None))])
    back = capturer.setup_for(served)  # type: ignore[arg-type]
    assert back is not None and back.policy.below_confidence == 0.5
    assert Capturer(CaptureSettings(), tmp_path).setup_for(_served(None)) is None  # type: ignore[arg-type]
