"""On-device batch predictions over local .npy files, persisted so they survive restarts.

Each job lives in ``jobs/<id>/``: ``job.json`` (the record, rewritten atomically on every state
change) and ``results.jsonl`` (one line per input, appended and fsynced in order). After a
restart a RUNNING or QUEUED job resumes from the number of complete result lines, dropping a torn
last line, so no input is lost or written twice. A job whose pinned model version is gone is
marked FAILED with the reason: never silently lost.

Inference goes through the same ``ServedModel`` as online requests (one code path), one input at
a time so a single bad file fails that line, not the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import AgentError, InvalidInput, JobNotFound, ModelNotFound
from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.metrics import METRICS
from edge_agent.serving.repository import ModelRepository

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


@dataclass
class JobRecord:
    job_id: str
    model_name: str
    model_version: str
    sources: list[str]
    results_path: str
    state: str = "QUEUED"
    done: int = 0
    failed: int = 0
    error: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0

    @property
    def total(self) -> int:
        return len(self.sources)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sources_from_manifest(path: Path) -> list[str]:
    if not path.is_file():
        raise InvalidInput(f"manifest {path} does not exist")
    sources = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            src = doc["source"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInput(
                f"{path.name} line {n}: expected a JSON object with 'source'"
            ) from None
        p = Path(src)
        sources.append(str(p if p.is_absolute() else (path.parent / p)))
    if not sources:
        raise InvalidInput(f"manifest {path} lists no inputs")
    return sources


def _sources_from_dir(path: Path) -> list[str]:
    if not path.is_dir():
        raise InvalidInput(f"input folder {path} does not exist")
    sources = sorted(str(p) for p in path.glob("*.npy"))
    if not sources:
        raise InvalidInput(f"input folder {path} holds no .npy files")
    return sources


def _to_jsonable(arr: np.ndarray) -> dict[str, Any]:
    data = (
        arr.tolist()
        if arr.dtype != np.object_
        else [b.decode("utf-8", "replace") for b in arr.reshape(-1)]
    )
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "data": data}


class BatchJobManager:
    def __init__(self, jobs_dir: Path, repo: ModelRepository, workers: int = 1) -> None:
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.repo = repo
        self._jobs: dict[str, JobRecord] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._n_workers = workers
        self._cancel: set[str] = set()

    # lifecycle
    async def start(self) -> None:
        for p in sorted(self.dir.glob("*/job.json")):
            doc = read_json(p)
            if not isinstance(doc, dict):
                continue
            job = JobRecord(**doc)
            self._jobs[job.job_id] = job
            if job.state not in TERMINAL:
                log.info("resuming batch job %s (%s)", job.job_id, job.state)
                self._queue.put_nowait(job.job_id)
        for _ in range(self._n_workers):
            self._workers.append(asyncio.get_running_loop().create_task(self._worker()))

    async def stop(self) -> None:
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # API
    def submit(
        self,
        model_name: str,
        model_version: str,
        manifest_path: str = "",
        input_dir: str = "",
        output_path: str = "",
    ) -> JobRecord:
        if bool(manifest_path) == bool(input_dir):
            raise InvalidInput("give exactly one of manifest_path or input_dir")
        served = self.repo.get(model_name, model_version)  # pins the version now
        sources = (
            _sources_from_manifest(Path(manifest_path))
            if manifest_path
            else _sources_from_dir(Path(input_dir))
        )
        job_id = uuid.uuid4().hex[:12]
        job_dir = self.dir / job_id
        job_dir.mkdir(parents=True)
        results = Path(output_path) if output_path else job_dir / "results.jsonl"
        # Claim the results file now: a resumed job counts the lines already in it as done, so
        # lines left by someone else (an old file, another job) would stand in for real results.
        try:
            results.parent.mkdir(parents=True, exist_ok=True)
            results.open("xb").close()
        except OSError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            why = "already exists" if isinstance(exc, FileExistsError) else str(exc)
            raise InvalidInput(f"cannot write results to {results}: {why}") from None
        job = JobRecord(
            job_id=job_id,
            model_name=served.name,
            model_version=served.version,
            sources=sources,
            results_path=str(results),
            created_at=time.time(),
        )
        self._save(job)
        self._jobs[job_id] = job
        self._queue.put_nowait(job_id)
        return job

    def get(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no batch job {job_id!r}")
        return job

    def list(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def cancel(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.state not in TERMINAL:
            self._cancel.add(job_id)
            if job.state == "QUEUED":
                self._finish(job, "CANCELED")
        return job

    # internals
    def _save(self, job: JobRecord) -> None:
        atomic_write_json(self.dir / job.job_id / "job.json", job.to_json())

    def _finish(self, job: JobRecord, state: str, error: str = "") -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        self._save(job)
        METRICS.batch_jobs.labels(state).inc()

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = self._jobs[job_id]
            if job.state in TERMINAL:
                continue
            try:
                await self._run(job)
            except Exception as exc:  # a job must end in a reported state, whatever happens
                log.exception("batch job %s failed", job_id)
                self._finish(job, "FAILED", repr(exc))

    def _resume_point(self, path: Path) -> int:
        """Complete lines already written; a torn last line (crash mid-write) is cut off."""
        if not path.exists():
            return 0
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(path, "r+b") as f:
                f.truncate(keep)
        return data[:keep].count(b"\n")

    async def _run(self, job: JobRecord) -> None:
        try:
            served = self.repo.get(job.model_name, job.model_version)
        except ModelNotFound as exc:
            self._finish(job, "FAILED", f"model version is no longer available: {exc}")
            return
        results = Path(job.results_path)
        results.parent.mkdir(parents=True, exist_ok=True)
        start = self._resume_point(results)
        job.done = start
        job.failed = (
            sum(1 for line in results.read_text().splitlines() if '"error"' in line) if start else 0
        )
        job.state = "RUNNING"
        self._save(job)
        input_name = served.inputs[0].name
        loop = asyncio.get_running_loop()
        with open(results, "ab") as out:
            for index in range(start, job.total):
                if job.job_id in self._cancel:
                    self._finish(job, "CANCELED")
                    return
                source = job.sources[index]
                line: dict[str, Any] = {"index": index, "source": source}
                try:
                    arr = await loop.run_in_executor(None, _load_npy, source)
                    spec = served.input_by_name[input_name]
                    if arr.dtype != spec.dtype:
                        raise InvalidInput(f"{source}: dtype {arr.dtype}, model wants {spec.dtype}")
                    if not spec.accepts(arr.shape):
                        if spec.accepts((1, *arr.shape)):
                            arr = arr[np.newaxis]
                        else:
                            raise InvalidInput(
                                f"{source}: shape {list(arr.shape)}, model wants {list(spec.shape)}"
                            )
                    outputs = await served.infer({input_name: arr}, None)
                    line["outputs"] = {k: _to_jsonable(v) for k, v in outputs.items()}
                except (AgentError, OSError, ValueError) as exc:
                    line["error"] = str(exc)
                    job.failed += 1
                out.write((json.dumps(line) + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
                job.done = index + 1
                if job.done % 50 == 0:
                    self._save(job)
        self._finish(job, "SUCCEEDED")


def _load_npy(source: str) -> np.ndarray:
    return np.load(source, allow_pickle=False)
