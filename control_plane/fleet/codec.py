"""All protobuf <-> domain mapping of the fleet channel, in one place.

Services never see ``fleet_pb2`` types: decoding produces the services' own dataclasses, and
encoding takes their views. A payload that does not parse raises ``ValueError``.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from control_plane.deployments.service import DeploymentResultReport, DesiredStateView
from control_plane.devices.service import ReportedStateReport
from control_plane.devices.telemetry.service import IncomingRecord
from control_plane.registry.packages.service import Chunk
from protos import fleet_capture, fleet_state
from protos import fleet_topics as topics
from protos.gen import fleet_capture_pb2, fleet_pb2

M = TypeVar("M", bound=Message)

_TELEMETRY_RECORDS_FIELD = fleet_pb2.TelemetryBatch.DESCRIPTOR.fields_by_name["records"].number

_STATUS = {
    fleet_pb2.DeviceStatus.ONLINE: "online",
    fleet_pb2.DeviceStatus.OFFLINE: "offline",
}


def _parse(cls: type[M], payload: bytes) -> M:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc
    return msg


def _now_ms() -> int:
    return int(time.time() * 1000)


def desired_state_to_proto(view: DesiredStateView, package_root: str | None = None) -> bytes:
    """Encoded by ``protos.fleet_state``, the module the agent decodes with.

    ``package_root``: the topic root under which packages have shared topics (each entry then
    names its ``chunk_topic``); None: devices get chunks on their own topic only."""
    models = tuple(
        fleet_state.DesiredModel.of_chunks(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest,
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_sha256=m.chunk_sha256,
            standby=m.standby,
            weight=m.weight,
            guard=fleet_state.LocalGuard(**m.guard) if m.guard else None,
            warmup=fleet_state.ShadowWarmup(**m.warmup) if m.warmup else None,
            cdc_index_sha256=m.cdc_index_sha256,
            chunk_topic=(
                topics.package_topic(m.package_digest, package_root)
                if package_root is not None
                else ""
            ),
            capture=fleet_capture.policy_from_dict(m.capture) if m.capture else None,
        )
        for m in view.models
    )
    removals = tuple(
        fleet_state.ModelRemoval(r.deployment_id, r.name, r.version) for r in view.removals
    )
    state = fleet_state.DesiredState(
        view.device_id,
        view.generation,
        view.deployment_id,
        models,
        issued_at_ms=_now_ms(),
        removals=removals,
    )
    return fleet_state.encode_desired_state(state)


def status_from_proto(payload: bytes) -> str:
    """'online' | 'offline' | 'unknown' (an empty payload is a cleared retained status)."""
    if not payload:
        return "unknown"
    return _STATUS.get(_parse(fleet_pb2.DeviceStatus, payload).state, "unknown")


def reported_from_proto(
    device_id: str, payload: bytes
) -> tuple[ReportedStateReport, DeploymentResultReport | None]:
    """The device's reported state document, and its last deployment result if it names one."""
    msg = _parse(fleet_pb2.ReportedState, payload)
    if msg.device_id and msg.device_id != device_id:
        raise ValueError(f"reported state names device {msg.device_id!r} on {device_id}'s topic")
    document: dict[str, Any] = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    result = None
    if msg.HasField("last_result") and msg.last_result.deployment_id:
        r = msg.last_result
        result = DeploymentResultReport(
            deployment_id=r.deployment_id,
            outcome=fleet_pb2.DeploymentResult.Outcome.Name(r.outcome),
            reason=r.reason,
            step=r.step,
            chunks_done=r.chunks_done,
            chunks_total=r.chunks_total,
        )
    return ReportedStateReport(device_id=device_id, document=document), result


def chunk_request_from_proto(payload: bytes) -> fleet_pb2.ChunkRequest:
    return _parse(fleet_pb2.ChunkRequest, payload)


def chunk_to_proto(
    digest: str, chunk: Chunk, chunk_count: int, request_id: str, cdc: bool = False
) -> bytes:
    """One chunk of a package; ``cdc`` marks a content-defined chunk (delta updates), named by
    its sha256, whose ``index`` is its place in the package's chunk index."""
    return fleet_pb2.ChunkData(
        package_digest=digest,
        index=chunk.index,
        chunk_count=chunk_count,
        sha256=chunk.sha256,
        data=chunk.data,
        request_id=request_id,
        cdc=cdc,
    ).SerializeToString()


def chunk_index_to_proto(digest: str, index: bytes, chunk_count: int, request_id: str) -> bytes:
    return fleet_pb2.ChunkData(
        package_digest=digest, chunk_count=chunk_count, cdc_index=index, request_id=request_id
    ).SerializeToString()


def chunk_error_to_proto(digest: str, request_id: str, error: str) -> bytes:
    return fleet_pb2.ChunkData(
        package_digest=digest, request_id=request_id, error=error
    ).SerializeToString()


def telemetry_refusal(payload: bytes) -> str | None:
    """Why a ``TelemetryBatch`` is refused unread (over the size or record limits), or None.

    Records are counted on the wire, stopping one past the limit, so a batch of a hundred
    thousand tiny records costs no more than one of the allowed size.
    """
    if len(payload) > topics.MAX_TELEMETRY_BATCH_BYTES:
        return f"{len(payload)} bytes, limit {topics.MAX_TELEMETRY_BATCH_BYTES}"
    limit = topics.MAX_TELEMETRY_BATCH_RECORDS
    records = count_field(payload, _TELEMETRY_RECORDS_FIELD, stop_after=limit)
    if records > limit:
        return f"more than {limit} records"
    return None


def count_field(payload: bytes, field_number: int, stop_after: int) -> int:
    """How often top-level ``field_number`` occurs in an encoded message (at most ``stop_after``
    + 1: counting stops there). Skips every field without decoding it; ``ValueError`` if the
    bytes are not a well-formed message."""
    i = count = 0
    end = len(payload)
    while i < end:
        key, i = _varint(payload, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(payload, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(payload, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if key >> 3 == field_number:
            count += 1
            if count > stop_after:
                return count
    if i != end:
        raise ValueError("truncated protobuf message")
    return count


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint too long")


def telemetry_from_proto(device_id: str, payload: bytes) -> tuple[list[IncomingRecord], int]:
    msg = _parse(fleet_pb2.TelemetryBatch, payload)
    if msg.device_id and msg.device_id != device_id:
        raise ValueError(f"telemetry names device {msg.device_id!r} on {device_id}'s topic")
    records = [
        IncomingRecord(
            seq=r.seq, kind=r.kind, timestamp_ms=r.timestamp_ms, payload_json=r.payload_json
        )
        for r in msg.records
        if r.seq > 0
    ]
    return records, msg.dropped


def capture_chunk_digest(payload: bytes) -> str:
    """The record digest a capture chunk names, read leniently from a chunk that failed its
    checks (so it can be refused by digest); '' when there is no valid one to read."""
    msg = fleet_capture_pb2.CaptureChunk()
    try:
        msg.ParseFromString(payload)
    except DecodeError:
        return ""
    return msg.digest if fleet_capture.valid_digest(msg.digest) else ""
