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

from protos.gen import fleet_pb2


@dataclass(frozen=True)
class DesiredModel:
    """One package a device should run (``fleet_pb2.DesiredModel``)."""

    deployment_id: str
    name: str
    version: str
    package_digest: str  # sha256 of the whole package file, lowercase hex
    package_size: int
    chunk_size: int
    chunk_count: int
    chunk_sha256: tuple[bytes, ...]  # raw 32-byte digest of each chunk, in index order

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


def encode_desired_state(state: DesiredState) -> bytes:
    msg = fleet_pb2.DesiredState(
        device_id=state.device_id,
        generation=state.generation,
        deployment_id=state.deployment_id,
        issued_at_ms=state.issued_at_ms,
    )
    for m in state.models:
        msg.models.add(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest,
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_count=m.chunk_count,
            chunk_sha256=m.chunk_sha256,
        )
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
        )
        for m in msg.models
    )
    return DesiredState(msg.device_id, msg.generation, msg.deployment_id, models, msg.issued_at_ms)
