"""On-device batch predictions over local files, persisted so they survive restarts.

Inputs are ``.npy`` arrays, encoded images (decoded by the package's declared preprocessing, the
same code as online BYTES image inputs) and JSON Lines of tensors, one input per line. The list
of inputs is fixed when the job is submitted: a tensor line is named ``<file>.jsonl#<line>``
(1-based), so resuming after a restart addresses exactly the same input at each index.

Each job lives in ``jobs/<id>/``: ``job.json`` (the record, rewritten atomically on every state
change) and ``results.jsonl`` (one line per input, appended and fsynced in order). After a
restart a RUNNING or QUEUED job resumes from the number of complete result lines, dropping a torn
last line, so no input is lost or written twice. A job whose pinned model version is gone is
marked FAILED with the reason: never silently lost.

Inference goes through the same validation (``validate_inputs``, which applies the
preprocessing) and ``ServedModel`` (which applies the postprocessing) as online requests: one
code path. Inputs run one at a time so a single bad input fails its line, not the job.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
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
from edge_agent.serving.requests import InputTensor
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.validation import validate_inputs
from model_packager.processing import TOPK_SUFFIX
from model_packager.tensors import datatype_to_dtype

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


#: Encoded image files a folder or manifest may name; Pillow decodes them (``processing.py``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: Files whose every non-blank line is one input (``{"inputs": {...}}``).
TENSOR_LINES_SUFFIX = ".jsonl"
_INPUT_SUFFIXES = (".npy", TENSOR_LINES_SUFFIX, *IMAGE_SUFFIXES)


def _line_ref(path: Path, lineno: int) -> str:
    return f"{path}#{lineno}"


def _parse_line_ref(source: str) -> tuple[str, int] | None:
    """``x.jsonl#12`` -> (``x.jsonl``, 12); any other source names a whole file."""
    path, sep, num = source.rpartition("#")
    if sep and num.isdigit() and path.lower().endswith(TENSOR_LINES_SUFFIX):
        return path, int(num)
    return None


def _tensor_lines(path: Path) -> list[str]:
    """One source per non-blank line of a tensors JSONL, each addressed by its line number."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    return [_line_ref(path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _expand(path: Path) -> list[str]:
    """A file named as an input -> its sources: a tensors JSONL yields one per line.

    A JSONL that cannot be read is kept as one source, so that it fails its own line (as a
    missing .npy does) instead of refusing the whole job.
    """
    if path.suffix.lower() == TENSOR_LINES_SUFFIX and path.is_file():
        try:
            return _tensor_lines(path)
        except InvalidInput:
            return [str(path)]
    return [str(path)]


def _sources_from_manifest(path: Path) -> list[str]:
    """Sources of a manifest: ``{"source": file}`` lines and inline ``{"inputs": ...}`` lines.

    An inline input stays in the manifest and is addressed by its line number, so the job
    record holds only references, whatever the size of the tensors.
    """
    if not path.is_file():
        raise InvalidInput(f"manifest {path} does not exist")
    sources: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "inputs" in doc:
            sources.append(_line_ref(path, n))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("source"), str):
            raise InvalidInput(
                f"{path.name} line {n}: expected a JSON object with 'source' or 'inputs'"
            )
        p = Path(doc["source"])
        sources.extend(_expand(p if p.is_absolute() else (path.parent / p)))
    if not sources:
        raise InvalidInput(f"manifest {path} lists no inputs")
    return sources


def _sources_from_dir(path: Path) -> list[str]:
    if not path.is_dir():
        raise InvalidInput(f"input folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _INPUT_SUFFIXES)
    sources = [s for p in files if p.is_file() for s in _expand(p)]
    if not sources:
        raise InvalidInput(
            f"input folder {path} holds no inputs ({', '.join(_INPUT_SUFFIXES)} files)"
        )
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
        job.failed = _failed_lines(results) if start else 0
        job.state = "RUNNING"
        self._save(job)
        reader = _InputReader(served)
        loop = asyncio.get_running_loop()
        with open(results, "ab") as out:
            for index in range(start, job.total):
                if job.job_id in self._cancel:
                    self._finish(job, "CANCELED")
                    return
                source = job.sources[index]
                line: dict[str, Any] = {"index": index, "source": source}
                try:
                    inputs = await loop.run_in_executor(None, reader.read, source)
                    outputs = await served.infer(inputs, None)
                    line["outputs"] = {k: _to_jsonable(v) for k, v in outputs.items()}
                    top = _top_k(served, outputs)
                    if top is not None:
                        line["top_k"] = top
                except (AgentError, OSError, ValueError, TypeError, binascii.Error) as exc:
                    line["error"] = str(exc)
                    job.failed += 1
                out.write((json.dumps(line) + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
                job.done = index + 1
                if job.done % 50 == 0:
                    self._save(job)
        self._finish(job, "SUCCEEDED")


def _failed_lines(results: Path) -> int:
    """Result lines that hold an error (parsed: a label may well contain the word)."""
    return sum(1 for line in results.read_text().splitlines() if "error" in json.loads(line))


def _top_k(served: ServedModel, outputs: dict[str, np.ndarray]) -> list[list[dict]] | None:
    """The post-processing's ``score:index:label`` strings as objects, per row, best first.

    The online path returns the strings (Triton's classification format); a results file is
    read by scripts, which should not have to split them.
    """
    post = served.processing.post
    if post is None or not post.top_k or post.output + TOPK_SUFFIX not in outputs:
        return None
    rows = outputs[post.output + TOPK_SUFFIX]
    out = []
    for row in rows.reshape(rows.shape[0], -1):
        items = []
        for item in row:
            text = item.decode() if isinstance(item, bytes) else str(item)
            score, index, label = text.split(":", 2)
            items.append({"label": label, "index": int(index), "score": float(score)})
        out.append(items)
    return out


class _InputReader:
    """A job's sources -> the model's validated inputs, in the executor (files, decoding).

    Every kind ends in ``validate_inputs``, the online requests' own check, which also decodes
    images through the package's preprocessing. Tensor files are read once per run, not once
    per line.
    """

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self._lines: dict[str, list[str]] = {}

    def read(self, source: str) -> dict[str, np.ndarray]:
        ref = _parse_line_ref(source)
        if ref is not None:
            return validate_inputs(self.served, self._tensor_line(*ref))
        if Path(source).suffix.lower() in IMAGE_SUFFIXES:
            return self._image(source)
        if Path(source).suffix.lower() == TENSOR_LINES_SUFFIX:
            # A tensors file that could not be read at submit time (see ``_expand``).
            raise InvalidInput(f"{source}: cannot read its lines")
        return self._npy(source)

    def _npy(self, source: str) -> dict[str, np.ndarray]:
        arr = np.load(source, allow_pickle=False)
        spec = self.served.inputs[0]
        if arr.dtype != spec.dtype:
            raise InvalidInput(f"{source}: dtype {arr.dtype}, model wants {spec.dtype}")
        if not spec.accepts(arr.shape) and spec.accepts((1, *arr.shape)):
            arr = arr[np.newaxis]  # a bare sample: add the batch dimension
        return validate_inputs(self.served, [InputTensor(spec.name, spec.datatype, arr.shape, arr)])

    def _image(self, source: str) -> dict[str, np.ndarray]:
        pre = self.served.processing.pre
        if pre is None:
            raise InvalidInput(
                f"{source}: model {self.served.name!r} declares no image preprocessing"
            )
        data = np.array([Path(source).read_bytes()], dtype=np.object_)
        return validate_inputs(self.served, [InputTensor(pre.input, "BYTES", data.shape, data)])

    def _tensor_line(self, path: str, lineno: int) -> list[InputTensor]:
        lines = self._lines.get(path)
        if lines is None:
            lines = self._lines[path] = Path(path).read_text().splitlines()
        if not 1 <= lineno <= len(lines):
            raise InvalidInput(f"{path} has no line {lineno} any more")
        try:
            doc = json.loads(lines[lineno - 1])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {lineno}: not JSON ({exc})") from None
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        if not isinstance(inputs, dict) or not inputs:
            raise InvalidInput(f'line {lineno}: expected {{"inputs": {{name: tensor}}}}')
        return [self._tensor(name, value) for name, value in inputs.items()]

    def _tensor(self, name: str, value: Any) -> InputTensor:
        """``{"shape", "datatype", "data"}`` as in the protocol's JSON, or just the (nested)
        data, whose datatype is then the model's and shape the nesting's."""
        spec = self.served.input_by_name.get(name)
        if not isinstance(value, dict):
            value = {"data": value}
        if "data" not in value:
            raise InvalidInput(f"input {name!r}: no 'data'")
        datatype = value.get("datatype") or (spec.datatype if spec is not None else "")
        if not datatype:
            known = ", ".join(self.served.input_by_name)
            raise InvalidInput(f"model {self.served.name!r} has no input {name!r} ({known})")
        data = value["data"]
        if datatype == "BYTES":
            b64 = (value.get("parameters") or {}).get("content_type") == "base64"
            flat = np.array(data, dtype=np.object_)
            arr = np.array(
                [base64.b64decode(v, validate=True) if b64 else str(v).encode() for v in flat.flat],
                dtype=np.object_,
            ).reshape(flat.shape)
        else:
            try:
                dtype = datatype_to_dtype(datatype)
            except KeyError as exc:
                raise InvalidInput(f"input {name!r}: {exc.args[0]}") from None
            arr = np.asarray(data, dtype=dtype)
        if "shape" in value:
            shape = tuple(int(d) for d in value["shape"])
            if math.prod(shape) != arr.size:
                raise InvalidInput(f"input {name!r}: {arr.size} values do not fill shape {shape}")
            arr = arr.reshape(shape)
        elif spec is not None and not spec.accepts(arr.shape) and spec.accepts((1, *arr.shape)):
            arr = arr[np.newaxis]  # a bare sample, as for .npy files
        return InputTensor(name, datatype, arr.shape, arr)
