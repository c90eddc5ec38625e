"""``Capturer``: what the data plane calls after a request, and what the fleet client tells it.

The data plane hands it every answered request (``after_inference``) and every shadow comparison
(``after_shadow``); for a version without an active policy that is one dictionary lookup. With
one, ``policy.decide`` picks the samples and each becomes a ``Pending`` offered to the writer's
bounded queue: nothing here waits, copies an input or touches the disk, and nothing raises into
the request (an error is logged and the request goes on).

Policies the control plane sends (``DesiredModel.capture``) are handed in by the fleet client
(``set_overrides``) and kept in ``policies.json`` next to the records, so a device restarted
offline keeps capturing as it was told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.capture.policy import ModelCapture, decide, resolve, score_rows
from edge_agent.capture.record import Pending
from edge_agent.capture.store import CaptureStore
from edge_agent.capture.writer import CaptureWriter
from edge_agent.config import CaptureSettings
from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.metrics import METRICS
from edge_agent.serving.requests import InputTensor
from edge_agent.serving.served_model import ServedModel
from protos import fleet_capture as fc

log = logging.getLogger(__name__)

POLICIES_NAME = "policies.json"

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Override:
    """What a deployment says of one version: its policy (None: the package's) and its id."""

    deployment_id: str
    policy: fc.CapturePolicy | None


class Capturer:
    def __init__(self, settings: CaptureSettings, folder: Path) -> None:
        self.folder = folder
        self.store = CaptureStore(folder, settings.max_records, settings.max_bytes)
        self.writer = CaptureWriter(self.store, settings.queue_size)
        self._overrides: dict[tuple[str, str], Override] = self._load_overrides()
        # (name, version) -> (the served object it was resolved for, its setup or None).
        self._setups: dict[tuple[str, str], tuple[ServedModel, ModelCapture | None]] = {}
        self._queued = METRICS.captures.labels("queued")
        self._skipped = METRICS.captures.labels("queue_full")

    def start(self) -> None:
        self.writer.start()

    def close(self) -> None:
        self.writer.stop()
        self.store.save()

    # --- policies ---------------------------------------------------------------------------

    def _load_overrides(self) -> dict[tuple[str, str], Override]:
        out = {}
        for item in read_json(self.folder / POLICIES_NAME) or []:
            try:
                raw = item.get("policy")
                policy = fc.policy_from_dict(raw) if raw is not None else None
                out[(item["name"], item["version"])] = Override(item["deployment_id"], policy)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: entry %r ignored: %s", POLICIES_NAME, item, exc)
        return out

    def set_overrides(self, entries: Iterable[tuple[str, str, Override]]) -> None:
        """The desired state's view of every listed version: (name, version, override)."""
        overrides = {(name, version): o for name, version, o in entries}
        if overrides == self._overrides:
            return
        self._overrides = overrides
        self._setups = {}
        doc = [
            {
                "name": name,
                "version": version,
                "deployment_id": o.deployment_id,
                "policy": fc.policy_to_dict(o.policy) if o.policy is not None else None,
            }
            for (name, version), o in sorted(overrides.items())
        ]
        atomic_write_json(self.folder / POLICIES_NAME, doc)

    def setup_for(self, served: ServedModel) -> ModelCapture | None:
        key = (served.name, served.version)
        cached = self._setups.get(key)
        if cached is not None and cached[0] is served:
            return cached[1]
        o = self._overrides.get(key)
        setup = resolve(served, o.policy if o else None, o.deployment_id if o else "")
        self._setups[key] = (served, setup)
        return setup

    # --- the serving path (event loop) ------------------------------------------------------

    def after_inference(
        self, served: ServedModel, requested: bool, raw: list[InputTensor], results: Tensors
    ) -> None:
        setup = self.setup_for(served)
        if setup is None:
            return
        try:
            t = _find(raw, setup.input_name)
            if t is None:
                return
            rows = _rows(served, t)
            scores = results.get(setup.scores) if setup.scores else None
            picked = decide(setup, requested, scores, rows)
            if not picked:
                return
            now_ms = time.time_ns() // 1_000_000
            batched = served.has_batch_dim or t.datatype == "BYTES"
            for row, reason, scores_row in picked:
                self._offer(
                    Pending(
                        setup,
                        served.name,
                        served.version,
                        reason,
                        now_ms,
                        t.datatype,
                        t.shape,
                        t.data,
                        row if batched else None,
                        scores_row,
                    )
                )
        except Exception:  # capture must never fail a request
            log.exception("capture decision for %s:%s failed", served.name, served.version)

    def after_shadow(
        self,
        served: ServedModel,
        shadow_version: str,
        raw: list[InputTensor],
        live: Tensors,
        shadow: Tensors,
    ) -> None:
        """Capture the samples on which the shadow's top-1 differs from the live version's."""
        setup = self.setup_for(served)
        if setup is None or not setup.policy.on_disagreement or not setup.scores:
            return
        try:
            t = _find(raw, setup.input_name)
            a, b = live.get(setup.scores), shadow.get(setup.scores)
            if t is None or a is None or b is None or a.shape != b.shape:
                return
            rows = _rows(served, t)
            pa, pb = score_rows(a, rows), score_rows(b, rows)
            if pa is None or pb is None:
                return
            differ = np.nonzero(pa.argmax(axis=1) != pb.argmax(axis=1))[0]
            if not differ.size:
                return
            now_ms = time.time_ns() // 1_000_000
            batched = served.has_batch_dim or t.datatype == "BYTES"
            for row in differ.tolist():
                self._offer(
                    Pending(
                        setup,
                        served.name,
                        served.version,
                        fc.DISAGREEMENT,
                        now_ms,
                        t.datatype,
                        t.shape,
                        t.data,
                        row if batched else None,
                        pa[row],
                        shadow_version=shadow_version,
                        shadow_scores=pb[row],
                    )
                )
        except Exception:
            log.exception("disagreement capture for %s:%s failed", served.name, served.version)

    def _offer(self, item: Pending) -> None:
        if self.writer.offer(item):
            self._queued.inc()
        else:
            self._skipped.inc()


def _find(raw: list[InputTensor], name: str) -> InputTensor | None:
    for t in raw:
        if t.name == name:
            return t
    return None


def _rows(served: ServedModel, t: InputTensor) -> int:
    if t.datatype == "BYTES":
        return int(t.data.size)
    if served.has_batch_dim and t.shape:
        return int(t.shape[0])
    return 1
