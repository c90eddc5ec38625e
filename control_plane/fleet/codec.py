"""All protobuf <-> domain mapping of the fleet channel, in one place.

Services never see ``fleet_pb2`` types: decoding produces the services' own dataclasses, and
encoding takes their views. A payload that does not parse raises ``ValueError``.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from control_plane.services.deployments import DesiredStateView
from control_plane.services.devices import DeploymentResultReport, ReportedStateReport
from control_plane.services.packages import Chunk
from control_plane.services.telemetry import IncomingRecord
from protos import fleet_state
from protos.gen import fleet_pb2

M = TypeVar("M", bound=Message)

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


def desired_state_to_proto(view: DesiredStateView) -> bytes:
    """Encoded by ``protos.fleet_state``, the module the agent decodes with."""
    models = tuple(
        fleet_state.DesiredModel.of_chunks(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest,
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_sha256=m.chunk_sha256,
        )
        for m in view.models
    )
    state = fleet_state.DesiredState(
        view.device_id, view.generation, view.deployment_id, models, issued_at_ms=_now_ms()
    )
    return fleet_state.encode_desired_state(state)


def status_from_proto(payload: bytes) -> str:
    """'online' | 'offline' | 'unknown' (an empty payload is a cleared retained status)."""
    if not payload:
        return "unknown"
    return _STATUS.get(_parse(fleet_pb2.DeviceStatus, payload).state, "unknown")


def reported_from_proto(device_id: str, payload: bytes) -> ReportedStateReport:
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
    return ReportedStateReport(device_id=device_id, document=document, last_result=result)


def chunk_request_from_proto(payload: bytes) -> fleet_pb2.ChunkRequest:
    return _parse(fleet_pb2.ChunkRequest, payload)


def chunk_to_proto(digest: str, chunk: Chunk, chunk_count: int, request_id: str) -> bytes:
    return fleet_pb2.ChunkData(
        package_digest=digest,
        index=chunk.index,
        chunk_count=chunk_count,
        sha256=chunk.sha256,
        data=chunk.data,
        request_id=request_id,
    ).SerializeToString()


def chunk_error_to_proto(digest: str, request_id: str, error: str) -> bytes:
    return fleet_pb2.ChunkData(
        package_digest=digest, request_id=request_id, error=error
    ).SerializeToString()


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
