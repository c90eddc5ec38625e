"""The install journal: ``data_dir/journal/<digest>.json`` while an install is in progress.

Each step of an install is written here (atomically) before it starts, and the file is deleted
only once the outcome is recorded. A journal found at start-up therefore means the agent died in
the middle of that install, and says at which step: recovery reports it FAILED naming the step,
unless ``state.json`` already names the package, in which case the commit happened and only the
clean-up was cut short.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write_json, read_json


@dataclass
class JournalEntry:
    """One install in progress, as it stands on disk."""

    digest: str
    name: str
    version: str
    step: str
    activate: bool
    started_at: float


class InstallJournal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # A kill during an atomic write can leave its temporary file behind; it was never renamed
        # into place, so it holds nothing anyone relies on.
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def begin(self, digest: str, name: str, version: str, activate: bool) -> JournalEntry:
        """Record a verified package about to be installed (step ``verify`` done)."""
        entry = JournalEntry(digest, name, version, "verify", activate, time.time())
        self._write(entry)
        return entry

    def advance(self, entry: JournalEntry, step: str) -> None:
        """Record that ``step`` starts, before any of its effects."""
        entry.step = step
        self._write(entry)

    def interrupted(self) -> list[JournalEntry]:
        """Installs a previous run started and never finished, oldest digest first."""
        out = []
        for p in sorted(self.folder.glob("*.json")):
            doc = read_json(p)
            if isinstance(doc, dict):
                out.append(
                    JournalEntry(
                        digest=doc["digest"],
                        name=doc.get("name", ""),
                        version=doc.get("version", ""),
                        step=doc.get("step", "verify"),
                        activate=bool(doc.get("activate", True)),
                        started_at=float(doc.get("started_at", 0.0)),
                    )
                )
        return out

    def clear(self, digest: str) -> None:
        (self.folder / f"{digest}.json").unlink(missing_ok=True)

    def _write(self, entry: JournalEntry) -> None:
        atomic_write_json(self.folder / f"{entry.digest}.json", asdict(entry))
