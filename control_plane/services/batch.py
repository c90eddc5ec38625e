"""Batch services: one agent batch job over a dataset version's split or an uploaded input.

A batch service is a service with one replica. When it is created, the selected samples (or the
uploaded inputs, ``inputs.py``) are written to the service's folder (``inputs.jsonl``: each
input's version or upload path, absolute file and label) and to the replica's folder as the
agent's manifest (``manifest.jsonl`` of absolute ``source`` paths). Once the supervisor sees the
replica running with its model installed it starts a ``BatchFollower`` thread, which submits ONE
job and follows it to the end through the agent's own command line (``python -m edge_agent batch
...``), the same interface an operator uses on a device, so the control plane needs no agent
protocol types of its own.

The job id is recorded in the service's spec as soon as the agent accepts it: a control plane
restarted mid-job follows the same job again (the agent resumes it) instead of starting another.
When the job ends, its result lines become the service's ``results.jsonl`` (one row per input,
with the dataset's label), the evaluation is computed when the version is labeled, and the
service ends ``succeeded`` or ``failed``; the supervisor then stops the replica.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import InvalidRequest, NotFound
from control_plane.datasets.versions.service import VersionService
from control_plane.services.detection import Detected, TrueBox, evaluate_detection
from control_plane.services.evaluation import evaluate
from control_plane.services.inputs import InputStore
from control_plane.services.models import Service, ServiceReplica
from control_plane.services.schemas import BatchInput, ResultRow

logger = logging.getLogger(__name__)

#: Where a batch service's states end; the supervisor stops its replica once it is in one.
DONE = ("succeeded", "failed")
POLL_S = 1.0
#: How long the agent may stay unreachable (a crashed replica restarting) before giving up.
UNREACHABLE_S = 120.0
CLI_TIMEOUT_S = 60.0

INPUTS = "inputs.jsonl"
RESULTS = "results.jsonl"
AGENT_MANIFEST = "manifest.jsonl"
AGENT_RESULTS = "agent-results.jsonl"
CSV_FIELDS = ("index", "source", "label", "predicted", "score", "top_k", "detections", "error")


# --- input ------------------------------------------------------------------------------------


def prepare_inputs(
    session: Session, ctx: AppContext, spec: BatchInput, service_dir: Path, replica_dir: Path
) -> dict[str, Any]:
    """Write the selected inputs (service folder) and the agent's manifest (replica folder).

    Returns what the spec records of the input: the count and, for a classification version,
    the label order the evaluation uses. A reference to a version or an upload that does not
    exist is the caller's mistake (422), not a missing resource of this endpoint.
    """
    if spec.upload is not None:
        try:
            uploaded = InputStore(ctx).sources(spec.upload)
        except NotFound as exc:
            raise InvalidRequest(f"input: {exc}") from None
        rows = [{"source": s["source"], "path": s["path"], "label": None} for s in uploaded]
        _write_inputs(rows, service_dir, replica_dir)
        return {"count": len(rows), "labels": None}
    if spec.dataset_id is None or spec.dataset_version is None:  # the schema refuses it
        raise InvalidRequest("input: dataset_id and dataset_version (or an upload id)")
    versions = VersionService(session, ctx)
    try:
        version = versions.get(spec.dataset_id, spec.dataset_version)
    except NotFound as exc:
        raise InvalidRequest(f"input: {exc}") from None
    folder = versions.path(version)
    items = [it for it in versions.items(version) if spec.split == "all" or it.split == spec.split]
    if not items:
        raise InvalidRequest(
            f"input: version {spec.dataset_version} of dataset {spec.dataset_id} has no "
            f"{spec.split} samples"
        )
    classification = all(a.box is None for it in items for a in it.annotations)
    rows = []
    for it in items:
        names = [a.label for a in it.annotations]
        label = names[0] if classification and len(names) == 1 else None
        row: dict[str, Any] = {
            "source": it.path,
            "path": str((folder / it.path).resolve()),
            "label": label,
        }
        if not classification:  # a detection version: the true boxes, for the evaluation
            row["boxes"] = [[a.label, *a.box] for a in it.annotations if a.box is not None]
            row["size"] = [it.width, it.height]
        rows.append(row)
    _write_inputs(rows, service_dir, replica_dir)
    return {
        "count": len(items),
        "labels": sorted(version.label_stats) if classification else None,
        "detection_labels": None if classification else sorted(version.label_stats),
    }


def _write_inputs(rows: list[dict[str, Any]], service_dir: Path, replica_dir: Path) -> None:
    """``inputs.jsonl`` (source, path, label) and the agent's manifest of absolute paths, one
    line each, so the agent's result ``index`` is the row's. A tensor line is named
    ``<file>.jsonl#<n>``, which the agent reads as that one line."""
    service_dir.mkdir(parents=True, exist_ok=True)
    replica_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(service_dir / INPUTS, "w", encoding="utf-8") as inputs,
        open(replica_dir / AGENT_MANIFEST, "w", encoding="utf-8") as manifest,
    ):
        for row in rows:
            inputs.write(json.dumps(row) + "\n")
            manifest.write(json.dumps({"source": row["path"]}) + "\n")


# --- the agent's command line ------------------------------------------------------------------


def _agent_cli(config: Path, address: str, *args: str) -> dict[str, Any]:
    """One ``edge-agent batch`` command against the replica; its JSON answer."""
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "batch",
        "--config",
        str(config),
        "--address",
        address,
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"edge-agent exited with {done.returncode}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _job(answer: dict[str, Any]) -> dict[str, Any]:
    """The agent job as JSON (protobuf's JSON names fields in camelCase and int64 as strings)."""
    return {
        "job_id": answer.get("jobId", ""),
        "state": answer.get("state", ""),
        "total": int(answer.get("total", 0)),
        "done": int(answer.get("done", 0)),
        "failed": int(answer.get("failed", 0)),
        "error": answer.get("error", ""),
    }


# --- following the job -------------------------------------------------------------------------


class BatchFollower:
    """Submits a batch service's job (unless its spec already names one) and follows it."""

    def __init__(
        self,
        ctx: AppContext,
        name: str,
        service_dir: Path,
        replica_dir: Path,
        lock: threading.RLock,
        stopping: Callable[[], bool],
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.service_dir = service_dir
        self.replica_dir = replica_dir
        self.lock = lock
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name=f"batch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:
            logger.exception("batch service %s: following its job failed", self.name)
            self._finish("failed", f"batch job: {exc}", None)

    def _address(self) -> str | None:
        """The replica's gRPC address while it runs (its port changes when it restarts)."""
        with self.ctx.sessions() as session:
            replica = session.get(ServiceReplica, (self.name, 0))
            if replica is None or replica.state != "running" or not replica.grpc_port:
                return None
            return f"127.0.0.1:{replica.grpc_port}"

    def _spec(self) -> dict[str, Any] | None:
        with self.ctx.sessions() as session:
            service = session.get(Service, self.name)
            if service is None or service.state in DONE:
                return None
            return dict(service.spec)

    def _record(self, job: dict[str, Any]) -> None:
        with self.lock, self.ctx.sessions() as session:
            service = session.get(Service, self.name)
            if service is not None:
                service.spec = {**service.spec, "batch": job}
                session.commit()

    def _follow(self) -> None:
        config = self.replica_dir / "agent.yaml"
        unreachable_since: float | None = None
        while not self.stopping():
            spec = self._spec()
            if spec is None:
                return  # deleted, or ended
            address = self._address()
            try:
                if address is None:
                    raise RuntimeError("replica not running")
                job = spec.get("batch") or {}
                if not job.get("job_id"):
                    model = spec["models"][0]
                    results = self.replica_dir / AGENT_RESULTS
                    results.unlink(missing_ok=True)
                    answer = _agent_cli(
                        config,
                        address,
                        "submit",
                        "--model",
                        model["model"],
                        "--model-version",
                        model["version"],
                        "--manifest",
                        str(self.replica_dir / AGENT_MANIFEST),
                        "--output",
                        str(results),
                    )
                    logger.info("batch service %s: job %s submitted", self.name, answer["jobId"])
                else:
                    answer = _agent_cli(config, address, "get", job["job_id"])
            except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_S:
                    self._finish("failed", f"agent unreachable: {exc}", None)
                    return
                time.sleep(POLL_S)
                continue
            unreachable_since = None
            job = _job(answer)
            self._record(job)
            if job["state"] == "SUCCEEDED":
                lines = read_jsonl(self.replica_dir / AGENT_RESULTS)
                self._finish("succeeded", "", collect(self.service_dir, lines, spec))
                return
            if job["state"] in ("FAILED", "CANCELED"):
                self._finish("failed", job["error"] or f"agent job {job['state'].lower()}", None)
                return
            time.sleep(POLL_S)

    def _finish(self, state: str, reason: str, fields: dict[str, Any] | None) -> None:
        with self.lock:
            finish_service(self.ctx, self.name, state, reason, fields)


def collect(service_dir: Path, lines: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """The agent's result lines (in index order) joined with the inputs into ``results.jsonl``;
    returns the spec fields of the evaluation: ``evaluation`` when the inputs are labeled
    (classification), ``detection_evaluation`` for a detection version read as ``detection``
    says. Shared by cloud and device batches."""
    inputs = read_jsonl(service_dir / INPUTS)
    info = spec.get("input_info", {})
    reader = spec.get("detection")
    if reader is not None:  # class indexes name the version's labels unless it says otherwise
        reader = {**reader, "labels": reader.get("labels") or info.get("detection_labels")}
    rows = [_row(line, inputs[int(line["index"])], reader) for line in lines]
    tmp = service_dir / (RESULTS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(row.model_dump_json() + "\n")
    tmp.replace(service_dir / RESULTS)
    if reader is not None:
        truths = [
            [TrueBox(str(b[0]), *map(float, b[1:5])) for b in inputs[r.index].get("boxes", [])]
            for r in rows
        ]
        found = [
            None if r.error is not None else [_detected(d) for d in r.detections or []]
            for r in rows
        ]
        ev = evaluate_detection(
            zip(truths, found, strict=True),
            info.get("detection_labels") or [],
            float(reader.get("iou_threshold", 0.5)),
        )
        return {"detection_evaluation": ev.model_dump()}
    labels = info.get("labels")
    if labels is None or any(r.label is None for r in rows):
        return {}
    return {
        "evaluation": evaluate(((str(r.label), r.predicted) for r in rows), labels).model_dump()
    }


def _detected(d: dict[str, Any]) -> Detected:
    return Detected(str(d["label"]), float(d["score"]), d["x"], d["y"], d["w"], d["h"])


def finish_service(
    ctx: AppContext, name: str, state: str, reason: str, fields: dict[str, Any] | None
) -> None:
    """A batch service's end: its state, reason and evaluation fields (a deleted one is left
    alone)."""
    with ctx.sessions() as session:
        service = session.get(Service, name)
        if service is None:
            return
        service.state, service.reason = state, reason
        if fields:
            service.spec = {**service.spec, **fields}
        service.updated_at = utcnow()
        session.commit()
    logger.info("batch service %s: %s %s", name, state, reason)


def _row(
    line: dict[str, Any], sample: dict[str, Any], detection: dict[str, Any] | None = None
) -> ResultRow:
    """One agent result line as a result row: the boxes for a detection batch; else top-1 from
    the package's top-k when it declares one, else the index of the largest value of its only
    output."""
    row = ResultRow(index=int(line["index"]), source=sample["source"], label=sample["label"])
    if "error" in line:
        row.error = str(line["error"])
        return row
    if detection is not None:
        try:
            row.detections = read_boxes(line.get("outputs", {}), detection, sample)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            row.error = f"detection outputs: {exc}"
        return row
    top = line.get("top_k")
    if top:
        row.top_k = list(top[0])
        best = top[0][0]
        row.predicted, row.score = str(best["label"]), float(best["score"])
        return row
    outputs = list(line.get("outputs", {}).values())
    if len(outputs) == 1:
        values = _flat(outputs[0].get("data", []))
        if values:
            best_index = max(range(len(values)), key=values.__getitem__)
            row.predicted, row.score = str(best_index), float(values[best_index])
    return row


def read_boxes(
    outputs: dict[str, Any], reader: dict[str, Any], sample: dict[str, Any]
) -> list[dict[str, Any]]:
    """The detections of one input in pixels of its image, best score first, as ``reader`` (a
    ``DetectionOutputs``) says to read the model's outputs."""
    boxes = _flat(outputs[reader["boxes"]]["data"])
    scores = _flat(outputs[reader["scores"]]["data"])
    classes = _flat(outputs[reader["classes"]]["data"])
    if len(boxes) != 4 * len(scores) or len(classes) != len(scores):
        raise ValueError(f"{len(boxes)} box values, {len(scores)} scores, {len(classes)} classes")
    labels = reader.get("labels") or []
    width, height = sample.get("size") or (1, 1)
    sx, sy = (width, height) if reader.get("normalized", True) else (1, 1)
    out = []
    for i, score in enumerate(scores):
        if score < float(reader.get("score_threshold", 0.0)):
            continue
        a, b, c, d = boxes[4 * i : 4 * i + 4]
        w, h = (c - a, d - b) if reader.get("box_format", "xyxy") == "xyxy" else (c, d)
        k = int(classes[i])
        label = labels[k] if 0 <= k < len(labels) else str(k)
        out.append(
            {"label": label, "score": score, "x": a * sx, "y": b * sy, "w": w * sx, "h": h * sy}
        )
    out.sort(key=lambda det: -det["score"])
    return out


def _flat(data: Any) -> list[float]:
    if isinstance(data, list):
        return [v for item in data for v in _flat(item)]
    return [float(data)] if isinstance(data, int | float) else []


# --- reading the results -----------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def result_rows(service_dir: Path) -> list[ResultRow]:
    """The rows of a finished batch service ([] before it has any)."""
    path = service_dir / RESULTS
    if not path.exists():
        return []
    return [ResultRow.model_validate(r) for r in read_jsonl(path)]


def csv_chunks(rows: list[ResultRow]) -> Iterator[str]:
    """The rows as CSV text; ``top_k`` as its JSON (a list does not fit a cell otherwise)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        doc = row.model_dump()
        for key in ("top_k", "detections"):
            doc[key] = json.dumps(doc[key]) if doc[key] is not None else ""
        writer.writerow({k: "" if doc[k] is None else doc[k] for k in CSV_FIELDS})
        if buf.tell() > 1 << 16:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
