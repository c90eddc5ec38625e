"""The on-disk model store.

Layout under ``data_dir``::

    packages/<sha256>/      extracted, verified package (manifest.json, signature.json, files)
    incoming/               package archives received over gRPC, before verification
    state.json              the committed state: per model, installed versions and the active one
    journal/<sha256>.json   an install in progress (``journal.InstallJournal``, deleted at commit)
    last_install.json       outcome of the most recent install, for status reports
    traffic.json            per model traffic split and shadow (``serving/traffic.py``)

``state.json`` is the single source of truth after a restart: whatever it names is what the agent
serves. It changes only through ``commit``, an atomic rename, so a crash leaves it old or new.
``traffic.json`` sits beside it, written the same way; it only says how requests spread over
what ``state.json`` serves, so a split naming a version that is gone is trimmed when read back.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.install.journal import InstallJournal
from edge_agent.serving.traffic import TrafficSplit


@dataclass
class ModelEntry:
    active: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # version -> package digest


@dataclass
class CommittedState:
    models: dict[str, ModelEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {
                n: {"active": e.active, "versions": dict(e.versions)}
                for n, e in self.models.items()
            }
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> CommittedState:
        state = cls()
        for name, e in (doc or {}).get("models", {}).items():
            state.models[name] = ModelEntry(active=e.get("active"), versions=dict(e["versions"]))
        return state

    def digests(self) -> set[str]:
        return {d for e in self.models.values() for d in e.versions.values()}


class ModelStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.packages = self.root / "packages"
        self.incoming = self.root / "incoming"
        for d in (self.packages, self.incoming):
            d.mkdir(parents=True, exist_ok=True)
        self.journal = InstallJournal(self.root / "journal")
        self._state_path = self.root / "state.json"
        self._last_install_path = self.root / "last_install.json"
        self._traffic_path = self.root / "traffic.json"
        # A kill during an atomic write can leave its temporary file behind; it was never renamed
        # into place, so it holds nothing anyone relies on.
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # committed state
    def load_state(self) -> CommittedState:
        return CommittedState.from_json(read_json(self._state_path))

    def save_state(self, state: CommittedState) -> None:
        atomic_write_json(self._state_path, state.to_json())

    # traffic splits
    def load_traffic(self) -> dict[str, TrafficSplit]:
        doc = read_json(self._traffic_path) or {}
        return {n: TrafficSplit.from_json(d) for n, d in dict(doc.get("models", {})).items()}

    def save_traffic(self, splits: dict[str, TrafficSplit]) -> None:
        """Every model's split, whole and atomically (models with the default split left out)."""
        doc = {"models": {n: s.to_json() for n, s in sorted(splits.items()) if not s.is_default}}
        atomic_write_json(self._traffic_path, doc)

    # packages
    def package_dir(self, digest: str) -> Path:
        return self.packages / digest

    def remove_unreferenced(self, keep: set[str]) -> list[str]:
        """Delete extracted packages and partial extractions no committed version refers to."""
        removed = []
        for p in self.packages.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    # last install outcome
    def save_last_install(self, doc: dict[str, Any]) -> None:
        atomic_write_json(self._last_install_path, doc)

    def last_install(self) -> dict[str, Any] | None:
        doc = read_json(self._last_install_path)
        return doc if isinstance(doc, dict) else None
