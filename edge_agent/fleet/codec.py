"""All ``fleet_pb2`` <-> plain type mapping of the device side, in one place.

The reconciler and the download code never see protobuf types: they get and give the types of
``domain.py`` and the shared ``protos.fleet_state``. A payload that does not parse raises
``ValueError``.
"""

from __future__ import annotations

import functools
import time

from google.protobuf.message import DecodeError, Message

from edge_agent.fleet.domain import ChunkAnswer, OutboxRecord, Reported, TelemetryOut
from protos import fleet_topics as topics
from protos.fleet_state import DesiredState, decode_desired_state
from protos.gen import fleet_pb2

# Widest values a record or batch field can take on the wire: the budget of a record's payload
# is computed with these, so a record that fits once fits whatever seq, clock or drop count
# it is sent with.
_MAX_UINT64 = 2**64 - 1
_MIN_INT64 = -(2**63)


def now_ms() -> int:
    return int(time.time() * 1000)


def _parse(cls: type[Message], payload: bytes) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc
    return msg


def desired_from_proto(payload: bytes) -> DesiredState:
    """Decoded by ``protos.fleet_state``, the module the control plane encodes with."""
    return decode_desired_state(payload)


def chunk_from_proto(payload: bytes) -> ChunkAnswer:
    msg = _parse(fleet_pb2.ChunkData, payload)
    assert isinstance(msg, fleet_pb2.ChunkData)
    return ChunkAnswer(
        msg.package_digest.lower(),
        msg.index,
        msg.data,
        msg.request_id,
        msg.error,
        cdc=msg.cdc,
        sha256=msg.sha256,
        cdc_index=msg.cdc_index,
    )


def chunk_request_to_proto(digest: str, indexes: list[int], request_id: str) -> bytes:
    return fleet_pb2.ChunkRequest(
        package_digest=digest, indexes=indexes, request_id=request_id
    ).SerializeToString()


def cdc_request_to_proto(
    digest: str, request_id: str, *, index: bool = False, digests: list[bytes] | None = None
) -> bytes:
    """A delta request: the package's chunk index and/or content-defined chunks by sha256."""
    return fleet_pb2.ChunkRequest(
        package_digest=digest, request_id=request_id, cdc_index=index, cdc_sha256=digests or []
    ).SerializeToString()


def status_to_proto(online: bool, agent_version: str) -> bytes:
    state = fleet_pb2.DeviceStatus.ONLINE if online else fleet_pb2.DeviceStatus.OFFLINE
    return fleet_pb2.DeviceStatus(state=state, agent_version=agent_version).SerializeToString()


def reported_to_proto(r: Reported) -> bytes:
    msg = fleet_pb2.ReportedState(
        device_id=r.device_id,
        agent_version=r.agent_version,
        timestamp_ms=now_ms(),
        desired_generation=r.desired_generation,
    )
    for m in r.models:
        msg.models.add(
            name=m.name,
            version=m.version,
            variant=m.variant,
            package_digest=m.package_digest,
            active=m.active,
        )
    if r.last_result is not None:
        res = r.last_result
        msg.last_result.CopyFrom(
            fleet_pb2.DeploymentResult(
                deployment_id=res.deployment_id,
                outcome=fleet_pb2.DeploymentResult.Outcome.Value(res.outcome),
                reason=res.reason,
                step=res.step,
                chunks_done=res.chunks_done,
                chunks_total=res.chunks_total,
            )
        )
    return msg.SerializeToString()


def telemetry_to_proto(t: TelemetryOut) -> bytes:
    """Every record of ``t`` in one batch, whatever its size (``pack_telemetry`` applies the
    limits)."""
    msg = fleet_pb2.TelemetryBatch(device_id=t.device_id, dropped=t.dropped)
    for r in t.records:
        msg.records.add(
            seq=r.seq, kind=r.kind, timestamp_ms=r.timestamp_ms, payload_json=r.payload_json
        )
    return msg.SerializeToString()


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _record_size(r: OutboxRecord) -> int:
    """Bytes ``r`` adds to an encoded ``TelemetryBatch``: field tag, length prefix, message."""
    n = fleet_pb2.TelemetryRecord(
        seq=r.seq, kind=r.kind, timestamp_ms=r.timestamp_ms, payload_json=r.payload_json
    ).ByteSize()
    return 1 + _varint_size(n) + n


def pack_telemetry(
    t: TelemetryOut,
    max_bytes: int = topics.MAX_TELEMETRY_BATCH_BYTES,
    max_records: int = topics.MAX_TELEMETRY_BATCH_RECORDS,
) -> tuple[bytes, int]:
    """The longest prefix of ``t.records`` whose batch stays within both limits, encoded, and
    how many records it carries.

    The control plane refuses a batch over either limit as a whole (``protos/fleet_topics.py``),
    so records are taken in order (seq order, as they must be sent) while the encoded size stays
    at most ``max_bytes``. Sizes are added up from each record's own encoding rather than by
    re-encoding growing batches, so packing costs one pass. ``(b"", 0)`` means the first record
    alone is over ``max_bytes``: the caller must shrink it (``Outbox.shrink``) or it would block
    every record behind it.
    """
    size = fleet_pb2.TelemetryBatch(device_id=t.device_id, dropped=t.dropped).ByteSize()
    taken = 0
    for r in t.records[:max_records]:
        size += _record_size(r)
        if size > max_bytes:
            break
        taken += 1
    if taken == 0:
        return b"", 0
    payload = telemetry_to_proto(TelemetryOut(t.device_id, t.records[:taken], t.dropped))
    if len(payload) > max_bytes:  # the sum above is exact; this guards the protocol limit
        raise AssertionError(f"packed telemetry batch is {len(payload)} bytes > {max_bytes}")
    return payload, taken


@functools.lru_cache(maxsize=64)
def telemetry_payload_budget(
    device_id: str, kind: str, max_bytes: int = topics.MAX_TELEMETRY_BATCH_BYTES
) -> int:
    """The most UTF-8 bytes of ``payload_json`` a record of ``kind`` may hold and still travel,
    alone, in a batch of at most ``max_bytes`` from ``device_id``.

    Computed for the widest seq, timestamp and drop count, so the answer holds for every batch
    the record may ever be sent in. Negative when even an empty payload would not fit (a kind
    name of nearly ``max_bytes``).
    """
    header = fleet_pb2.TelemetryBatch(device_id=device_id, dropped=_MAX_UINT64).ByteSize()
    bare = fleet_pb2.TelemetryRecord(seq=_MAX_UINT64, kind=kind, timestamp_ms=_MIN_INT64).ByteSize()

    def total(payload_bytes: int) -> int:
        record = bare + 1 + _varint_size(payload_bytes) + payload_bytes
        return header + 1 + _varint_size(record) + record

    budget = max_bytes - header - bare - 2
    while budget >= 0 and total(budget) > max_bytes:
        budget -= 1
    return budget
