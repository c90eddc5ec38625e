"""Batch jobs the control plane sends to this device over the fleet channel.

The control plane keeps a retained list of the device's jobs on ``<prefix>/batch/jobs``
(``protos/fleet_batch.py``). For each job in it, ``DeviceBatchRunner`` runs these steps, each
resumed from disk after a restart of the agent or a break of the link:

1. **Pull** the input zip in chunks, exactly as a package is pulled (``downloads.ChunkPuller``
   into a ``ChunkDownload``: a window of requests, every chunk checked against its digest, kept
   on disk), then check the whole file's sha256 and extract it safely into ``input/`` (relative
   names only, regular files, at most ``MAX_EXTRACTED_BYTES``).
2. **Run** it as one of the agent's own batch jobs (``BatchJobManager``: the same inference code
   path as every request, results fsynced line by line, resumed after a restart) over the
   archive's ``manifest.jsonl``; its id is kept in ``job.json`` so a restart follows the same job.
3. **Report** its state on ``batch/state`` (on every change, at most once a second while it
   runs) and, once it has succeeded, **send** its result lines on ``batch/rows`` in pages of at
   most ``MAX_ROWS_BYTES``, starting from the job's ``rows_received`` (what the control plane
   already holds). Pages are sent again from the latest ``rows_received`` after a reconnect and
   every ``RESEND_S`` while rows are missing: delivery is at least once, the control plane keeps
   each row once.

A job that leaves the list is over: it is canceled if it still runs and its folder
(``<data_dir>/fleet/batch/<job_id>/``) is deleted. A job whose model version the device does not
run, or whose input cannot be pulled or read, is reported FAILED with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from edge_agent.config import FleetSettings
from edge_agent.errors import AgentError
from edge_agent.fleet.domain import ChunkAnswer
from edge_agent.fleet.downloads import ChunkDownload, ChunkPuller, DownloadError
from edge_agent.fleet.link import new_request_id
from edge_agent.fsutil import atomic_write_json, read_json
from protos import fleet_batch as fb

log = logging.getLogger(__name__)

#: How often missing rows (or the final state of a failed job) are sent again while the job
#: stays listed.
RESEND_S = 30.0
#: Largest total size of an extracted input archive.
MAX_EXTRACTED_BYTES = 8 << 30
STATE_EVERY_S = 1.0


class AgentJob(Protocol):
    job_id: str
    state: str
    done: int
    failed: int
    error: str

    @property
    def total(self) -> int: ...


class BatchJobs(Protocol):
    """What this module needs of the agent's ``BatchJobManager`` (the fleet wing does not import
    the jobs wing: the app hands the manager in)."""

    def submit(
        self,
        model_name: str,
        model_version: str,
        manifest_path: str = "",
        input_dir: str = "",
        output_path: str = "",
    ) -> AgentJob: ...

    def get(self, job_id: str) -> AgentJob: ...

    def list(self) -> Sequence[AgentJob]: ...

    def cancel(self, job_id: str) -> AgentJob: ...


class InputRefused(Exception):
    """The input archive is not one this device will read."""


def extract_input(archive: Path, dest: Path) -> None:
    """Extract the input zip into the new folder ``dest``, all or nothing."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            total = 0
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if (
                    info.filename.startswith("/")
                    or "\\" in info.filename
                    or any(p in ("..", "") for p in name.parts)
                ):
                    raise InputRefused(f"member {info.filename!r}: not a safe relative path")
                mode = (info.external_attr >> 16) & 0o170000
                if mode not in (0, 0o100000) and not info.is_dir():
                    raise InputRefused(f"member {info.filename!r}: not a regular file")
                total += info.file_size
                if total > MAX_EXTRACTED_BYTES:
                    raise InputRefused(f"input larger than {MAX_EXTRACTED_BYTES} bytes")
                if info.is_dir():
                    continue
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        if not (tmp / "manifest.jsonl").is_file():
            raise InputRefused("the input has no manifest.jsonl")
        tmp.rename(dest)
    except (zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputRefused(f"unreadable input: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DeviceBatchRunner:
    def __init__(
        self,
        settings: FleetSettings,
        root: Path,
        jobs: BatchJobs,
        prefix: str,
        publish: Callable[[str, bytes], tuple[int, int] | None],
        connected: asyncio.Event,
    ) -> None:
        self.fs = settings
        self.root = root
        self.downloads = root / "downloads"
        self.jobs = jobs
        leaves = (*fb.DEVICE_SUBSCRIBES, *fb.DEVICE_PUBLISHES)
        self.topic = {leaf: f"{prefix}/{leaf}" for leaf in leaves}
        self._publish = publish
        self._connected = connected
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listed: dict[str, fb.BatchJob] = {}
        self._pullers: dict[str, ChunkPuller] = {}
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def subscriptions(self) -> list[str]:
        return [self.topic[leaf] for leaf in fb.DEVICE_SUBSCRIBES]

    # --- from the fleet client (event loop) ---------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Handle a message of the batch topics; False for any other topic."""
        if topic == self.topic[fb.JOBS]:
            if payload:  # empty: a cleared retained message (the device was deleted)
                self._offer(fb.decode_jobs(payload))
            return True
        if topic == self.topic[fb.INPUT_DATA]:
            chunk = fb.decode_input_chunk(payload)
            job = self._listed.get(chunk.job_id)
            puller = self._pullers.get(chunk.job_id)
            if job is not None and puller is not None:
                answer = ChunkAnswer(
                    job.input_digest, chunk.index, chunk.data, chunk.request_id, chunk.error
                )
                puller.offer(answer)
            return True
        return False

    def on_connected(self) -> None:
        for event in self._wake.values():
            event.set()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _offer(self, listed: fb.BatchJobs) -> None:
        """A new job list: start the new jobs, end the ones no longer listed. A listed job's new
        ``rows_received`` is only noted: its rows are sent again from there after a reconnect
        or ``RESEND_S``, not at once (the pages already in flight would be sent twice)."""
        jobs = {j.job_id: j for j in listed.jobs}
        loop = asyncio.get_running_loop()
        for job_id in list(self._tasks):
            if job_id not in jobs:
                self._tasks.pop(job_id).cancel()
                self._wake.pop(job_id, None)
        self._listed = jobs
        for job_id in jobs:
            task = self._tasks.get(job_id)
            if task is None or task.done():
                self._wake[job_id] = asyncio.Event()
                self._tasks[job_id] = asyncio.create_task(self._run(job_id))
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if folder.name != "downloads" and folder.name not in jobs:
                loop.run_in_executor(None, self._remove, folder.name)

    # --- one job ------------------------------------------------------------------------------

    async def _run(self, job_id: str) -> None:
        folder = self.root / job_id
        try:
            await self._steps(job_id, folder)
        except asyncio.CancelledError:
            raise  # the job left the list (its folder goes) or the agent stops (it stays)
        except Exception:
            log.exception("device batch job %s failed", job_id)

    async def _steps(self, job_id: str, folder: Path) -> None:
        job = self._listed[job_id]
        folder.mkdir(parents=True, exist_ok=True)
        record = read_json(folder / "job.json") or {}
        try:
            if not (folder / "input").is_dir():
                await self._pull(job, folder)
            agent_job = record.get("agent_job")
            known = {j.job_id for j in self.jobs.list()}
            if agent_job not in known:
                output = folder / f"results-{new_request_id()}.jsonl"
                submitted = self.jobs.submit(
                    job.model,
                    job.version,
                    manifest_path=str(folder / "input" / "manifest.jsonl"),
                    output_path=str(output),
                )
                record = {"agent_job": submitted.job_id, "results": str(output)}
                atomic_write_json(folder / "job.json", record)
                log.info("device batch job %s: agent job %s", job_id, submitted.job_id)
        except (AgentError, DownloadError, InputRefused) as exc:
            await self._report_failure(job_id, str(exc))
            return
        await self._follow(job_id, record["agent_job"], Path(record["results"]))

    async def _pull(self, job: fb.BatchJob, folder: Path) -> None:
        dl = ChunkDownload(self.downloads, job.as_download())
        path = dl.assembled()
        if path is None:
            self._state(fb.JobState(job.job_id, "PULLING"))

            def request(indexes: list[int]) -> str | None:
                request_id = new_request_id()
                req = fb.InputRequest(job.job_id, tuple(indexes), request_id)
                sent = self._publish(self.topic[fb.INPUT_REQUEST], fb.encode_input_request(req))
                return None if sent is None else request_id

            puller = ChunkPuller(
                dl,
                self.fs,
                send=request,
                connected=self._connected,
                still_wanted=lambda: None,
                on_chunk=lambda done: None,
            )
            self._pullers[job.job_id] = puller
            try:
                await puller.run()
            finally:
                self._pullers.pop(job.job_id, None)
            path = await asyncio.to_thread(dl.assemble)
        await asyncio.to_thread(extract_input, path, folder / "input")
        ChunkDownload.discard(self.downloads, job.input_digest)

    async def _follow(self, job_id: str, agent_job: str, results: Path) -> None:
        last: fb.JobState | None = None
        sent_at = 0.0
        while True:
            rec = self.jobs.get(agent_job)
            state = fb.JobState(job_id, rec.state, rec.total, rec.done, rec.failed, rec.error)
            now = time.monotonic()
            due = now - sent_at >= STATE_EVERY_S or rec.state in fb.TERMINAL
            if state != last and due and self._state(state):
                last, sent_at = state, now
            if rec.state in fb.TERMINAL and state == last:
                break
            await asyncio.sleep(0.2)
        wake = self._wake[job_id]
        while True:  # until the job leaves the list (this task is then canceled)
            if state.state == "SUCCEEDED":
                self._send_rows(job_id, results, state.total)
            self._state(state)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), RESEND_S)

    async def _report_failure(self, job_id: str, reason: str) -> None:
        log.warning("device batch job %s: %s", job_id, reason)
        state = fb.JobState(job_id, "FAILED", error=reason)
        wake = self._wake[job_id]
        while True:
            self._state(state)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), RESEND_S)

    def _send_rows(self, job_id: str, results: Path, total: int) -> None:
        job = self._listed.get(job_id)
        start = job.rows_received if job is not None else 0
        if start >= total:
            return
        lines = results.read_text().splitlines()[start:total]
        lines = [_fit(line) for line in lines]
        for page in fb.pages(job_id, start, lines):
            if self._publish(self.topic[fb.ROWS], fb.encode_rows(page)) is None:
                return  # not connected: everything from here again after the reconnect

    def _state(self, state: fb.JobState) -> bool:
        return self._publish(self.topic[fb.STATE], fb.encode_state(state)) is not None

    def _remove(self, job_id: str) -> None:
        record = read_json(self.root / job_id / "job.json") or {}
        agent_job = record.get("agent_job")
        if agent_job:
            with contextlib.suppress(AgentError):
                self.jobs.cancel(agent_job)
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        log.info("device batch job %s removed", job_id)


def _fit(line: str) -> str:
    """A result line that fits one page, or its error row (a row is never dropped)."""
    if len(line.encode()) <= fb.MAX_ROWS_BYTES - 64:
        return line
    doc = json.loads(line)
    return json.dumps(
        {
            "index": doc.get("index"),
            "source": doc.get("source"),
            "error": f"result line of {len(line)} bytes is too large to send",
        }
    )
