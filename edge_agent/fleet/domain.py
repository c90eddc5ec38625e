"""The fleet channel's plain types on the device side: what it reports, pulls and sends.

The desired state itself (``DesiredState``, ``DesiredModel``) is shared with the control plane
and lives in ``protos.fleet_state``; everything here is the device's own vocabulary. None of it
knows protobuf: ``codec.py`` maps these types to and from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.fleet_state import DesiredModel, ModelRemoval

IN_PROGRESS, INSTALLED, FAILED, REMOVED = "IN_PROGRESS", "INSTALLED", "FAILED", "REMOVED"


@dataclass
class Result:
    """A deployment's outcome as the device reports it (``DeploymentResult``).

    Persisted in ``fleet/state.json`` field by field (``Result(**doc)`` reads it back), so the
    fields are the file format too.
    """

    deployment_id: str
    outcome: str  # IN_PROGRESS | INSTALLED | FAILED | REMOVED
    step: str = ""
    reason: str = ""
    chunks_done: int = 0
    chunks_total: int = 0
    package_digest: str = ""

    @classmethod
    def in_progress(cls, m: DesiredModel, step: str, chunks_done: int) -> Result:
        """Working on ``step`` (``download`` or ``install``) with ``chunks_done`` on disk."""
        return cls(
            m.deployment_id, IN_PROGRESS, step, "", chunks_done, m.chunk_count, m.package_digest
        )

    @classmethod
    def installed(cls, m: DesiredModel) -> Result:
        """Committed: the package is in ``state.json`` (every chunk was needed to get there)."""
        return cls(
            m.deployment_id, INSTALLED, "commit", "", m.chunk_count, m.chunk_count, m.package_digest
        )

    @classmethod
    def activated(cls, m: DesiredModel) -> Result:
        """Installed already (no chunk fetched) and made the active version again."""
        return cls(m.deployment_id, INSTALLED, "activate", "", 0, m.chunk_count, m.package_digest)

    @classmethod
    def removed(cls, r: ModelRemoval, reason: str = "") -> Result:
        """A removal done (``reason`` says when there was nothing to remove)."""
        return cls(r.deployment_id, REMOVED, "uninstall", reason)

    @classmethod
    def failed(
        cls, m: DesiredModel, step: str, reason: str, chunks_done: int | None = None
    ) -> Result:
        """Given up at ``step``; by default the download had finished (all chunks done)."""
        done = m.chunk_count if chunks_done is None else chunks_done
        return cls(m.deployment_id, FAILED, step, reason, done, m.chunk_count, m.package_digest)

    @property
    def final(self) -> bool:
        return self.outcome in (INSTALLED, FAILED, REMOVED)


@dataclass(frozen=True)
class ModelReport:
    """One installed version in ``ReportedState.models``."""

    name: str
    version: str
    variant: str
    package_digest: str
    active: bool


@dataclass(frozen=True)
class Reported:
    """What the device publishes, retained, as its reported state."""

    device_id: str
    agent_version: str
    models: list[ModelReport]
    last_result: Result | None
    desired_generation: int


@dataclass(frozen=True)
class ChunkAnswer:
    """One ``ChunkData``: a chunk, or the control plane's refusal of a request (``error``)."""

    package_digest: str
    index: int
    data: bytes
    request_id: str
    error: str
    # Delta updates (delta.py): a content-defined chunk named by ``sha256``, or the chunk index.
    cdc: bool = False
    sha256: bytes = b""
    cdc_index: bytes = b""


@dataclass(frozen=True)
class OutboxRecord:
    """A telemetry record waiting in the outbox, numbered for exactly-once delivery."""

    seq: int
    kind: str
    timestamp_ms: int
    payload_json: str


@dataclass
class TelemetryOut:
    """One ``TelemetryBatch``: the oldest undelivered records and how many were dropped."""

    device_id: str
    records: list[OutboxRecord] = field(default_factory=list)
    dropped: int = 0
