"""What the device has acted on, kept in ``data_dir/fleet/state.json`` (atomic writes).

* ``acted_generation``: the highest DesiredState generation acted on; lower ones are ignored,
  so a reordered or replayed old desired state cannot roll the device back.
* ``results``: the outcome per deployment key ``<deployment_id>:<package_digest>``; a final one
  (INSTALLED / FAILED) is reported again but never redone, which makes repeats harmless.
* ``attempts``: installs started per key, so an install that keeps killing the agent ends FAILED
  instead of looping.
* ``last_result``: the key of the result that ReportedState.last_result carries.
* ``split_models``: models whose traffic split the desired state set (standby weights), so the
  split is cleared when the weights go, and a split set locally over gRPC is left alone.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_agent.fleet.domain import Result
from edge_agent.fsutil import atomic_write_json, read_json


class FleetState:
    def __init__(self, path: Path) -> None:
        self.path = path
        doc: dict[str, Any] = read_json(path) or {}
        self.acted_generation: int = int(doc.get("acted_generation", 0))
        self.results: dict[str, Result] = {
            k: Result(**v) for k, v in doc.get("results", {}).items()
        }
        self.attempts: dict[str, int] = {k: int(v) for k, v in doc.get("attempts", {}).items()}
        self.last_key: str = str(doc.get("last_key", ""))
        self.split_models: set[str] = set(doc.get("split_models", []))

    @property
    def last_result(self) -> Result | None:
        return self.results.get(self.last_key)

    def set_result(self, key: str, result: Result) -> None:
        self.results[key] = result
        self.last_key = key

    def prune(self, keep: set[str]) -> None:
        """Forget bookkeeping of deployments no longer desired (keeps the file small)."""
        for d in (self.results, self.attempts):
            for k in [k for k in d if k not in keep and k != self.last_key]:
                del d[k]

    def save(self) -> None:
        atomic_write_json(
            self.path,
            {
                "acted_generation": self.acted_generation,
                "results": {k: asdict(v) for k, v in self.results.items()},
                "attempts": self.attempts,
                "last_key": self.last_key,
                "split_models": sorted(self.split_models),
            },
        )
