"""All ``fleet_pb2`` <-> dataclass mapping of the device side, in one place.

The reconciler and the download code never see protobuf types. A payload that does not parse
raises ``ValueError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError, Message

from protos.gen import fleet_pb2


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class DesiredModel:
    deployment_id: str
    name: str
    version: str
    package_digest: str
    package_size: int
    chunk_size: int
    chunk_count: int
    chunk_sha256: tuple[bytes, ...]

    @property
    def key(self) -> str:
        """Idempotency key: a deployment of one package. Repeats of it are the same work."""
        return f"{self.deployment_id}:{self.package_digest}"


@dataclass(frozen=True)
class Desired:
    device_id: str
    generation: int
    deployment_id: str
    models: tuple[DesiredModel, ...]


@dataclass(frozen=True)
class ChunkAnswer:
    package_digest: str
    index: int
    data: bytes
    request_id: str
    error: str


@dataclass
class Result:
    """A deployment's outcome as the device reports it (``DeploymentResult``)."""

    deployment_id: str
    outcome: str  # IN_PROGRESS | INSTALLED | FAILED
    step: str = ""
    reason: str = ""
    chunks_done: int = 0
    chunks_total: int = 0
    package_digest: str = ""

    @property
    def final(self) -> bool:
        return self.outcome in ("INSTALLED", "FAILED")


@dataclass(frozen=True)
class ModelReport:
    name: str
    version: str
    variant: str
    package_digest: str
    active: bool


@dataclass(frozen=True)
class Reported:
    device_id: str
    agent_version: str
    models: list[ModelReport]
    last_result: Result | None
    desired_generation: int


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    kind: str
    timestamp_ms: int
    payload_json: str


@dataclass
class TelemetryOut:
    device_id: str
    records: list[OutboxRecord] = field(default_factory=list)
    dropped: int = 0


def _parse(cls: type[Message], payload: bytes) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc
    return msg


def desired_from_proto(payload: bytes) -> Desired:
    msg = _parse(fleet_pb2.DesiredState, payload)
    assert isinstance(msg, fleet_pb2.DesiredState)
    models = tuple(
        DesiredModel(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest.lower(),
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_count=m.chunk_count,
            chunk_sha256=tuple(bytes(h) for h in m.chunk_sha256),
        )
        for m in msg.models
    )
    return Desired(msg.device_id, msg.generation, msg.deployment_id, models)


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
