"""A device's desired state as plain dataclasses, and its ``fleet_pb2.DesiredState`` bytes.

The control plane encodes it (retained on ``<root>/<D>/desired``) and the agent decodes it. Both
import this module instead of mirroring the message in two places, so what a field means (the
chunk count follows the digests, a digest is lowercase hex) cannot drift between the sides;
tests/fleet/test_fleet_state.py round-trips cloud encode -> device decode. It sits next to
``fleet_topics.py`` because, like the topic layout, it is part of the wire contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from protos.fleet_capture import CapturePolicy, policy_from_pb, policy_to_pb
from protos.gen import fleet_pb2


@dataclass(frozen=True)
class LocalGuard:
    """The device's own check after an activation (``fleet_pb2.LocalGuard``)."""

    bake_s: float
    max_error_rate: float = 1.0
    max_p99_ms: float = 0.0  # 0: latency not checked
    min_requests: int = 1


@dataclass(frozen=True)
class ShadowWarmup:
    """Mirror live requests to the version before activating it (``fleet_pb2.ShadowWarmup``)."""

    fraction: float
    min_requests: int
    min_agreement: float = 1.0
    max_abs_diff: float = 0.0  # outputs without classes: largest difference allowed
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ModelRemoval:
    """A version the device should uninstall (``fleet_pb2.ModelRemoval``)."""

    deployment_id: str
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.deployment_id}:remove:{self.name}:{self.version}"


@dataclass(frozen=True)
class DesiredModel:
    """One package a device should hold (``fleet_pb2.DesiredModel``).

    ``standby`` False makes it the model's active version once installed (re-activated when the
    device already holds it); True keeps it loaded beside the active one, taking ``weight``
    percent of the requests that name no version.
    """

    deployment_id: str
    name: str
    version: str
    package_digest: str  # sha256 of the whole package file, lowercase hex
    package_size: int
    chunk_size: int
    chunk_count: int
    chunk_sha256: tuple[bytes, ...]  # raw 32-byte digest of each chunk, in index order
    standby: bool = False
    weight: float = 0.0
    guard: LocalGuard | None = None
    warmup: ShadowWarmup | None = None
    # What the device keeps of this version's inputs (None: the package's own capture block).
    capture: CapturePolicy | None = None

    @classmethod
    def of_chunks(
        cls,
        *,
        deployment_id: str,
        name: str,
        version: str,
        package_digest: str,
        package_size: int,
        chunk_size: int,
        chunk_sha256: Sequence[bytes],
        standby: bool = False,
        weight: float = 0.0,
        guard: LocalGuard | None = None,
        warmup: ShadowWarmup | None = None,
        capture: CapturePolicy | None = None,
    ) -> DesiredModel:
        """What the sender states: the chunk count is the number of chunk digests."""
        return cls(
            deployment_id,
            name,
            version,
            package_digest,
            package_size,
            chunk_size,
            len(chunk_sha256),
            tuple(chunk_sha256),
            standby,
            weight,
            guard,
            warmup,
            capture,
        )

    @property
    def key(self) -> str:
        """Idempotency key: a deployment of one package. Repeats of it are the same work."""
        return f"{self.deployment_id}:{self.package_digest}"


@dataclass(frozen=True)
class DesiredState:
    """Everything one device should run, at one generation (``fleet_pb2.DesiredState``)."""

    device_id: str
    generation: int
    deployment_id: str
    models: tuple[DesiredModel, ...]
    issued_at_ms: int = 0
    removals: tuple[ModelRemoval, ...] = ()

    def active_entries(self) -> dict[str, DesiredModel]:
        """Per model name, the entry to activate: the last one listed that is not standby."""
        out: dict[str, DesiredModel] = {}
        for m in self.models:
            if not m.standby:
                out[m.name] = m
        return out


def encode_desired_state(state: DesiredState) -> bytes:
    msg = fleet_pb2.DesiredState(
        device_id=state.device_id,
        generation=state.generation,
        deployment_id=state.deployment_id,
        issued_at_ms=state.issued_at_ms,
    )
    for m in state.models:
        entry = msg.models.add(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest,
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_count=m.chunk_count,
            chunk_sha256=m.chunk_sha256,
            standby=m.standby,
            weight=m.weight,
        )
        if m.guard is not None:
            entry.guard.CopyFrom(
                fleet_pb2.LocalGuard(
                    bake_s=m.guard.bake_s,
                    max_error_rate=m.guard.max_error_rate,
                    max_p99_ms=m.guard.max_p99_ms,
                    min_requests=m.guard.min_requests,
                )
            )
        if m.warmup is not None:
            entry.warmup.CopyFrom(
                fleet_pb2.ShadowWarmup(
                    fraction=m.warmup.fraction,
                    min_requests=m.warmup.min_requests,
                    min_agreement=m.warmup.min_agreement,
                    max_abs_diff=m.warmup.max_abs_diff,
                    timeout_s=m.warmup.timeout_s,
                )
            )
        if m.capture is not None:
            entry.capture.CopyFrom(policy_to_pb(m.capture))
    for r in state.removals:
        msg.removals.add(deployment_id=r.deployment_id, name=r.name, version=r.version)
    return msg.SerializeToString()


def decode_desired_state(payload: bytes) -> DesiredState:
    """The desired state in ``payload``; ``ValueError`` when it is not a DesiredState."""
    msg = fleet_pb2.DesiredState()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {msg.DESCRIPTOR.full_name}: {exc}") from exc
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
            standby=m.standby,
            weight=m.weight,
            guard=(
                LocalGuard(
                    m.guard.bake_s,
                    m.guard.max_error_rate,
                    m.guard.max_p99_ms,
                    m.guard.min_requests,
                )
                if m.HasField("guard")
                else None
            ),
            warmup=(
                ShadowWarmup(
                    m.warmup.fraction,
                    m.warmup.min_requests,
                    m.warmup.min_agreement,
                    m.warmup.max_abs_diff,
                    m.warmup.timeout_s,
                )
                if m.HasField("warmup")
                else None
            ),
            capture=policy_from_pb(m.capture) if m.HasField("capture") else None,
        )
        for m in msg.models
    )
    removals = tuple(ModelRemoval(r.deployment_id, r.name, r.version) for r in msg.removals)
    return DesiredState(
        msg.device_id, msg.generation, msg.deployment_id, models, msg.issued_at_ms, removals
    )
