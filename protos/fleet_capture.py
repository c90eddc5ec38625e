"""Captured samples (data flywheel): topic leaves, dataclasses and ``fleet_capture_pb2`` bytes.

The agent and the control plane both import this module (as they do ``fleet_batch.py``), so a
field, a limit or a chunk boundary means the same on both sides. Every leaf sits under the
device's own prefix ``<root>/<D>/``, so the broker ACL still confines a device to its subtree
(``control_plane/fleet/broker_config.py`` grants these leaves).

| leaf                | direction    | retained | QoS | payload          |
| ------------------- | ------------ | -------- | --- | ---------------- |
| ``captures/up``     | dev -> cloud | no       | 1   | ``CaptureChunk`` |
| ``captures/ack``    | cloud -> dev | no       | 1   | ``CaptureAck``   |
| ``captures/ctl``    | cloud -> dev | yes      | 1   | ``CaptureControl``|
| ``captures/stat``   | dev -> cloud | yes      | 1   | ``CaptureStatus``|

A record is one input as received (image bytes, or a ``.npy`` of the tensor) and its
``CaptureMeta``. Its digest is the sha256 (lowercase hex) of the data alone, so the same input
captured twice is one record to the control plane. The data travels in chunks of exactly
``CHUNK_BYTES`` (the last one shorter): chunk ``i`` covers ``[i * CHUNK_BYTES, ...)``, chunk 0
carries the meta. The chunk size is fixed here rather than sent, so the receiver can place any
chunk it gets, in any order, and check its length.

Limits: a record's data is at most ``MAX_RECORD_BYTES`` (the agent does not capture a bigger
input), its encoded meta at most ``MAX_META_BYTES``; so every ``CaptureChunk`` message is at
most ``MAX_CHUNK_MESSAGE_BYTES``, far below the broker's packet limit
(``broker_config.max_packet_bytes``, which counts the longest leaf, ``captures/stat``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from protos import fleet_topics
from protos.gen import fleet_capture_pb2 as pb

UP = "captures/up"
ACK = "captures/ack"
CONTROL = "captures/ctl"
STATUS = "captures/stat"

DEVICE_PUBLISHES = (UP, STATUS)
DEVICE_SUBSCRIBES = (ACK, CONTROL)
#: Leaves the control plane subscribes to for every device (with ``+`` in place of the id).
CONTROL_PLANE_SUBSCRIBES = (UP, STATUS)

#: Every chunk of a record but the last holds exactly this many bytes of its data.
CHUNK_BYTES = 256 * 1024
#: The largest record (input data) a device captures and the control plane accepts.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: The largest encoded ``CaptureMeta`` (labels are cut to fit: see ``MAX_LABEL_CHARS``).
MAX_META_BYTES = 64 * 1024
MAX_LABEL_CHARS = 256
#: The largest ``CaptureChunk`` message: a full chunk, the meta and the envelope.
MAX_CHUNK_MESSAGE_BYTES = CHUNK_BYTES + MAX_META_BYTES + 1024
#: Top classes a record keeps when the policy says 0, and the most it may ask for.
DEFAULT_TOP_K = 5
MAX_TOP_K = 100

assert MAX_CHUNK_MESSAGE_BYTES < fleet_topics.MAX_MESSAGE_BYTES

# Why a record was captured (``CaptureMeta.reason``), in the order the agent checks them.
REQUESTED = "requested"
LOW_CONFIDENCE = "low_confidence"
DISAGREEMENT = "disagreement"
SAMPLED = "sampled"
REASONS = (REQUESTED, LOW_CONFIDENCE, DISAGREEMENT, SAMPLED)

# What a record's data is (``CaptureMeta.input_kind``).
IMAGE = "image"
TENSOR = "tensor"
INPUT_KINDS = (IMAGE, TENSOR)
NPY_MEDIA_TYPE = "application/x-npy"

# ``CaptureAck.state``.
STORED = "STORED"
PARTIAL = "PARTIAL"
REJECTED = "REJECTED"
ACK_STATES = (STORED, PARTIAL, REJECTED)

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    """A record's digest: sha256 of its data, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def valid_digest(digest: str) -> bool:
    return bool(_DIGEST_RE.match(digest))


def chunk_count(size: int) -> int:
    """How many chunks carry ``size`` bytes (an empty record is one empty chunk)."""
    return max(1, math.ceil(size / CHUNK_BYTES))


def chunk_span(size: int, index: int) -> tuple[int, int]:
    """``[start, end)`` of chunk ``index`` in a record of ``size`` bytes."""
    start = index * CHUNK_BYTES
    return start, min(start + CHUNK_BYTES, size)


# --- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapturePolicy:
    """When a model's inputs are kept (``CapturePolicy``; the manifest's ``capture`` block).

    Each trigger is off at its zero value; ``enabled`` False turns them all off.
    """

    enabled: bool = False
    below_confidence: float = 0.0
    sample_fraction: float = 0.0
    on_disagreement: bool = False
    on_request: bool = False
    top_k: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ValueError(f"capture sample_fraction {self.sample_fraction} is not in [0, 1]")
        if self.below_confidence < 0.0 or math.isnan(self.below_confidence):
            raise ValueError(f"capture below_confidence {self.below_confidence} is negative")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"capture top_k {self.top_k} is not in [0, {MAX_TOP_K}]")

    @property
    def active(self) -> bool:
        """True when some request could be captured."""
        return self.enabled and (
            self.below_confidence > 0
            or self.sample_fraction > 0
            or self.on_disagreement
            or self.on_request
        )

    @property
    def effective_top_k(self) -> int:
        return self.top_k or DEFAULT_TOP_K


_POLICY_FIELDS = {
    "enabled": bool,
    "below_confidence": float,
    "sample_fraction": float,
    "on_disagreement": bool,
    "on_request": bool,
    "top_k": int,
}


def policy_from_dict(raw: Mapping[str, Any]) -> CapturePolicy:
    """The manifest's ``capture`` block (JSON) as a policy; ``ValueError`` names what is wrong.

    Unknown keys are refused (a misspelt trigger would otherwise silently capture nothing).
    Omitting ``enabled`` in a block that names a trigger means enabled.
    """
    if not isinstance(raw, Mapping):
        raise ValueError("capture must be an object")
    unknown = sorted(set(raw) - set(_POLICY_FIELDS))
    if unknown:
        raise ValueError(f"capture: unknown field(s) {unknown}; known: {sorted(_POLICY_FIELDS)}")
    values: dict[str, Any] = {}
    for name, kind in _POLICY_FIELDS.items():
        if name not in raw:
            continue
        value = raw[name]
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, int | float) and not isinstance(value, bool)
        )
        if kind is int and ok and value != int(value):
            ok = False
        if not ok:
            raise ValueError(f"capture.{name} must be a {kind.__name__}, not {value!r}")
        values[name] = kind(value)
    values.setdefault("enabled", True)
    return CapturePolicy(**values)


def policy_to_dict(policy: CapturePolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in _POLICY_FIELDS}


def policy_to_pb(policy: CapturePolicy) -> pb.CapturePolicy:
    return pb.CapturePolicy(**policy_to_dict(policy))


def policy_from_pb(msg: pb.CapturePolicy) -> CapturePolicy:
    """The wire policy; a value out of range is refused with ``ValueError``."""
    return CapturePolicy(
        enabled=msg.enabled,
        below_confidence=msg.below_confidence,
        sample_fraction=msg.sample_fraction,
        on_disagreement=msg.on_disagreement,
        on_request=msg.on_request,
        top_k=msg.top_k,
    )


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class CaptureMeta:
    """What a record says about its input (sent with chunk 0)."""

    model: str
    version: str
    reason: str
    captured_at_ms: int
    input_name: str
    input_kind: str
    media_type: str = ""
    deployment_id: str = ""
    top_k: tuple[Prediction, ...] = ()
    shadow_version: str = ""
    shadow_top_k: tuple[Prediction, ...] = ()


@dataclass(frozen=True)
class CaptureChunk:
    device_id: str
    digest: str
    size: int
    index: int
    count: int
    data: bytes
    meta: CaptureMeta | None = None  # on index 0 only


@dataclass(frozen=True)
class CaptureAck:
    digest: str
    state: str  # STORED | PARTIAL | REJECTED
    next_index: int = 0
    reason: str = ""


@dataclass(frozen=True)
class CaptureControl:
    device_id: str
    purge_id: str
    purge_before_ms: int


@dataclass(frozen=True)
class CaptureStatus:
    device_id: str
    stored_records: int = 0
    stored_bytes: int = 0
    captured_total: int = 0
    uploaded_total: int = 0
    dropped_total: int = 0
    last_purge_id: str = ""
    timestamp_ms: int = 0


def _parse(cls: type, payload: bytes):  # type: ignore[no-untyped-def]
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {cls.__name__}: {exc}") from None
    return msg


def _predictions_pb(preds: tuple[Prediction, ...]) -> list[pb.Prediction]:
    return [
        pb.Prediction(index=p.index, label=p.label[:MAX_LABEL_CHARS], score=p.score) for p in preds
    ]


def _predictions(msgs: Any) -> tuple[Prediction, ...]:
    return tuple(Prediction(p.index, p.label, p.score) for p in msgs)


def meta_to_pb(meta: CaptureMeta) -> pb.CaptureMeta:
    return pb.CaptureMeta(
        model=meta.model,
        version=meta.version,
        deployment_id=meta.deployment_id,
        reason=meta.reason,
        captured_at_ms=meta.captured_at_ms,
        input_name=meta.input_name,
        input_kind=meta.input_kind,
        media_type=meta.media_type,
        top_k=_predictions_pb(meta.top_k),
        shadow_version=meta.shadow_version,
        shadow_top_k=_predictions_pb(meta.shadow_top_k),
    )


def meta_from_pb(msg: pb.CaptureMeta) -> CaptureMeta:
    return CaptureMeta(
        model=msg.model,
        version=msg.version,
        reason=msg.reason,
        captured_at_ms=msg.captured_at_ms,
        input_name=msg.input_name,
        input_kind=msg.input_kind,
        media_type=msg.media_type,
        deployment_id=msg.deployment_id,
        top_k=_predictions(msg.top_k),
        shadow_version=msg.shadow_version,
        shadow_top_k=_predictions(msg.shadow_top_k),
    )


def encode_meta(meta: CaptureMeta) -> bytes:
    """The meta's bytes (how the agent stores it); ``ValueError`` beyond ``MAX_META_BYTES``."""
    data = meta_to_pb(meta).SerializeToString()
    if len(data) > MAX_META_BYTES:
        raise ValueError(f"capture meta of {len(data)} bytes exceeds {MAX_META_BYTES}")
    return data


def decode_meta(payload: bytes) -> CaptureMeta:
    return meta_from_pb(_parse(pb.CaptureMeta, payload))


def check_meta(meta: CaptureMeta) -> None:
    """``ValueError`` when the meta misses what a receiver needs to file the record."""
    if not meta.model or not meta.version:
        raise ValueError("capture meta names no model and version")
    if meta.reason not in REASONS:
        raise ValueError(f"capture reason {meta.reason!r} is not one of {REASONS}")
    if meta.input_kind not in INPUT_KINDS:
        raise ValueError(f"capture input_kind {meta.input_kind!r} is not one of {INPUT_KINDS}")


def chunks_of(
    device_id: str, data: bytes, meta: CaptureMeta, first: int = 0, digest: str | None = None
) -> Iterator[CaptureChunk]:
    """The record's chunks from index ``first`` on (meta on chunk 0)."""
    digest = digest or digest_of(data)
    count = chunk_count(len(data))
    for index in range(first, count):
        start, end = chunk_span(len(data), index)
        yield CaptureChunk(
            device_id,
            digest,
            len(data),
            index,
            count,
            data[start:end],
            meta if index == 0 else None,
        )


def encode_chunk(chunk: CaptureChunk) -> bytes:
    msg = pb.CaptureChunk(
        device_id=chunk.device_id,
        digest=chunk.digest,
        size=chunk.size,
        index=chunk.index,
        count=chunk.count,
        data=chunk.data,
    )
    if chunk.meta is not None:
        msg.meta.CopyFrom(meta_to_pb(chunk.meta))
    return msg.SerializeToString()


def decode_chunk(payload: bytes) -> CaptureChunk:
    """A chunk whose shape is consistent (``ValueError`` otherwise), before any digest check.

    Checked: the message size, the digest's form, the record size, the count for that size, the
    index, the data length for that index, and a meta (with model, version, known reason and
    kind) on chunk 0. The whole record's digest can only be checked once every chunk is in.
    """
    if len(payload) > MAX_CHUNK_MESSAGE_BYTES:
        raise ValueError(f"capture chunk of {len(payload)} bytes exceeds {MAX_CHUNK_MESSAGE_BYTES}")
    msg = _parse(pb.CaptureChunk, payload)
    if not valid_digest(msg.digest):
        raise ValueError(f"capture digest {msg.digest!r} is not 64 lowercase hex digits")
    if msg.size > MAX_RECORD_BYTES:
        raise ValueError(f"capture record of {msg.size} bytes exceeds {MAX_RECORD_BYTES}")
    if msg.count != chunk_count(msg.size):
        raise ValueError(
            f"capture of {msg.size} bytes has {chunk_count(msg.size)} chunks, not {msg.count}"
        )
    if msg.index >= msg.count:
        raise ValueError(f"capture chunk index {msg.index} is not below its count {msg.count}")
    start, end = chunk_span(msg.size, msg.index)
    if len(msg.data) != end - start:
        raise ValueError(
            f"capture chunk {msg.index} holds {len(msg.data)} bytes, expected {end - start}"
        )
    meta = None
    if msg.index == 0:
        if not msg.HasField("meta"):
            raise ValueError("capture chunk 0 carries no meta")
        meta = meta_from_pb(msg.meta)
        check_meta(meta)
    return CaptureChunk(
        msg.device_id, msg.digest, msg.size, msg.index, msg.count, bytes(msg.data), meta
    )


_ACK_STATE_PB = {
    STORED: pb.CaptureAck.STORED,
    PARTIAL: pb.CaptureAck.PARTIAL,
    REJECTED: pb.CaptureAck.REJECTED,
}
_ACK_STATE_NAME = {v: k for k, v in _ACK_STATE_PB.items()}


def encode_ack(ack: CaptureAck) -> bytes:
    if ack.state not in _ACK_STATE_PB:
        raise ValueError(f"capture ack state {ack.state!r} is not one of {ACK_STATES}")
    return pb.CaptureAck(
        digest=ack.digest,
        state=_ACK_STATE_PB[ack.state],
        next_index=ack.next_index,
        reason=ack.reason,
    ).SerializeToString()


def decode_ack(payload: bytes) -> CaptureAck:
    msg = _parse(pb.CaptureAck, payload)
    if msg.state not in _ACK_STATE_NAME:
        raise ValueError(f"capture ack for {msg.digest!r} has no state")
    if not valid_digest(msg.digest):
        raise ValueError(f"capture ack digest {msg.digest!r} is not 64 lowercase hex digits")
    return CaptureAck(msg.digest, _ACK_STATE_NAME[msg.state], msg.next_index, msg.reason)


def encode_control(ctl: CaptureControl) -> bytes:
    return pb.CaptureControl(
        device_id=ctl.device_id, purge_id=ctl.purge_id, purge_before_ms=ctl.purge_before_ms
    ).SerializeToString()


def decode_control(payload: bytes) -> CaptureControl:
    msg = _parse(pb.CaptureControl, payload)
    return CaptureControl(msg.device_id, msg.purge_id, msg.purge_before_ms)


def encode_status(status: CaptureStatus) -> bytes:
    return pb.CaptureStatus(
        device_id=status.device_id,
        stored_records=status.stored_records,
        stored_bytes=status.stored_bytes,
        captured_total=status.captured_total,
        uploaded_total=status.uploaded_total,
        dropped_total=status.dropped_total,
        last_purge_id=status.last_purge_id,
        timestamp_ms=status.timestamp_ms,
    ).SerializeToString()


def decode_status(payload: bytes) -> CaptureStatus:
    msg = _parse(pb.CaptureStatus, payload)
    return CaptureStatus(
        msg.device_id,
        msg.stored_records,
        msg.stored_bytes,
        msg.captured_total,
        msg.uploaded_total,
        msg.dropped_total,
        msg.last_purge_id,
        msg.timestamp_ms,
    )
