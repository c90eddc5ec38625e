"""The telemetry outbox: records wait on disk until the broker acknowledged them.

stdlib ``sqlite3`` (the agent must not import SQLAlchemy), in ``data_dir/fleet/outbox.sqlite3``.
Each record gets the next per-device sequence number, persisted with it in the same transaction,
so numbers never repeat across restarts. Bounded: at ``max_records`` the oldest records are
dropped and counted (the count is persisted and travels in every TelemetryBatch). Records are
deleted only after the PUBACK of the batch that carried them, so a cut connection redelivers
them; the control plane keeps only seqs above the highest it stored, so delivery is exactly once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.fleet.domain import OutboxRecord

log = logging.getLogger(__name__)

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

    def append(self, kind: str, payload: dict[str, Any]) -> int:
        """Store one record; returns its seq. Drops the oldest records when full."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
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

    def acknowledge(self, up_to_seq: int) -> None:
        """Delete records up to ``up_to_seq`` once the broker acknowledged them."""
        self._db.execute("DELETE FROM records WHERE seq <= ?", (up_to_seq,))
