"""The telemetry outbox: records wait on disk until the broker acknowledged them.

stdlib ``sqlite3`` (the agent must not import SQLAlchemy), in ``data_dir/fleet/outbox.sqlite3``.
Each record gets the next per-device sequence number, persisted with it in the same transaction,
so numbers never repeat across restarts. Bounded: at ``max_records`` the oldest records are
dropped and counted (the count is persisted and travels in every TelemetryBatch). Records are
deleted only after the PUBACK of the batch that carried them, so a cut connection redelivers
them; the control plane keeps only seqs above the highest it stored, so delivery is exactly once.

Size: a batch may carry at most ``MAX_TELEMETRY_BATCH_BYTES`` (``protos/fleet_topics.py``), so a
record whose payload alone would not fit could never be sent, and since records go in seq order
it would hold back every record after it. Such a payload is replaced, when the record is
appended, by a smaller JSON object (``shrink_payload``): its short top-level entries are kept and
``"_truncated": {"bytes": <original size>, "limit": <budget>, "removed": [<keys>]}`` says what
went. The record keeps its seq, kind and timestamp, so the control plane still sees that it
happened (a deployment event keeps its ids and outcome, losing only an enormous ``reason``), and
nothing is silently lost: each one is logged and counted (``edge_agent_telemetry_truncated``).
``shrink`` does the same to a record already on disk when the sender finds it too large (written
by an agent that predates the limit, or before the device id grew longer).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.fleet.domain import OutboxRecord
from edge_agent.metrics import METRICS

log = logging.getLogger(__name__)

#: Top-level payload entries whose JSON encoding is at most this long survive a shrink: ids,
#: names, outcomes and numbers, not the one large value that made the record too big.
_KEEP_VALUE_BYTES = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    payload_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 1), ('dropped', 0);
"""


class Outbox:
    def __init__(self, path: Path, max_records: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        # Used from the agent's event loop thread only; autocommit off, explicit transactions.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    @property
    def dropped(self) -> int:
        """Records discarded because the outbox was full, over the outbox's whole life."""
        return self._meta("dropped")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def append(
        self, kind: str, payload: dict[str, Any], max_payload_bytes: int | None = None
    ) -> int:
        """Store one record; returns its seq. Drops the oldest records when full.

        ``max_payload_bytes`` (``codec.telemetry_payload_budget``): a payload encoding to more is
        shrunk first (see the module docstring), so every stored record can be sent.
        """
        text = _dumps(payload)
        if max_payload_bytes is not None and len(text.encode()) > max_payload_bytes:
            text = _shrunk(kind, payload, text, max_payload_bytes)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._meta("next_seq")
            count = int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
            excess = count + 1 - self.max_records
            if excess > 0:
                db.execute(
                    "DELETE FROM records WHERE seq IN "
                    "(SELECT seq FROM records ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))
            db.execute(
                "INSERT INTO records (seq, kind, timestamp_ms, payload_json) VALUES (?, ?, ?, ?)",
                (seq, kind, int(time.time() * 1000), text),
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if excess > 0:
            log.warning("telemetry outbox full: dropped %d oldest record(s)", excess)
        return seq

    def oldest(self, limit: int) -> list[OutboxRecord]:
        """The oldest ``limit`` records in seq order (the order they must be sent in)."""
        rows = self._db.execute(
            "SELECT seq, kind, timestamp_ms, payload_json FROM records ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [OutboxRecord(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    def shrink(self, seq: int, kind: str, max_payload_bytes: int) -> None:
        """Shrink the payload of stored record ``seq`` to ``max_payload_bytes``, in place."""
        row = self._db.execute("SELECT payload_json FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        text = str(row[0])
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        doc = payload if isinstance(payload, dict) else {}
        new = _shrunk(kind, doc, text, max_payload_bytes)
        self._db.execute("UPDATE records SET payload_json = ? WHERE seq = ?", (new, seq))

    def acknowledge(self, up_to_seq: int) -> None:
        """Delete records up to ``up_to_seq`` once the broker acknowledged them."""
        self._db.execute("DELETE FROM records WHERE seq <= ?", (up_to_seq,))


def _dumps(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def shrink_payload(payload: dict[str, Any], original_bytes: int, max_bytes: int) -> str:
    """A JSON object of at most ``max_bytes`` standing in for a payload that was too large.

    Keeps the top-level entries that encode to at most ``_KEEP_VALUE_BYTES`` and adds
    ``_truncated`` (original size, the limit, the keys removed); when even that is too large,
    only ``_truncated`` with the size and the limit. ``ValueError`` when not even that fits.
    """
    kept = {k: v for k, v in payload.items() if len(_dumps(v).encode()) <= _KEEP_VALUE_BYTES}
    marker: dict[str, Any] = {"bytes": original_bytes, "limit": max_bytes}
    removed = sorted(str(k) for k in payload if k not in kept)
    for doc in ({**kept, "_truncated": {**marker, "removed": removed}}, {"_truncated": marker}):
        text = _dumps(doc)
        if len(text.encode()) <= max_bytes:
            return text
    raise ValueError(f"a telemetry payload cannot fit in {max_bytes} bytes")


def _shrunk(kind: str, payload: dict[str, Any], text: str, max_bytes: int) -> str:
    original = len(text.encode())
    new = shrink_payload(payload, original, max_bytes)
    METRICS.telemetry_truncated.inc()
    log.warning(
        "telemetry record %r: payload of %d bytes cannot fit a batch (limit %d), shrunk to %s",
        kind,
        original,
        max_bytes,
        new[:200],
    )
    return new
