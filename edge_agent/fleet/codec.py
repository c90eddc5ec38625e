"""All ``fleet_pb2`` <-> plain type mapping of the device side, in one place.

The reconciler and the download code never see protobuf types: they get and give the types of
``domain.py`` and the shared ``protos.fleet_state``. A payload that does not parse raises
``ValueError``.
"""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError, Message

from edge_agent.fleet.domain import ChunkAnswer, Reported, TelemetryOut
from protos.fleet_state import DesiredState, decode_desired_state
from protos.gen import fleet_pb2


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
    return ChunkAnswer(msg.package_digest.lower(), msg.index, msg.data, msg.request_id, msg.error)


def chunk_request_to_proto(digest: str, indexes: list[int], request_id: str) -> bytes:
    return fleet_pb2.ChunkRequest(
        package_digest=digest, indexes=indexes, request_id=request_id
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
    msg = fleet_pb2.TelemetryBatch(device_id=t.device_id, dropped=t.dropped)
    for r in t.records:
        msg.records.add(
            seq=r.seq, kind=r.kind, timestamp_ms=r.timestamp_ms, payload_json=r.payload_json
        )
    return msg.SerializeToString()
