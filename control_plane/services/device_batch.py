"""Batch services on a named device: the job travels over the fleet channel, the rows come back.

A batch service created with ``device`` has no replica of its own. Creating it selects the inputs
as for a cloud batch (``batch.prepare_inputs``) and packs them into ``device-input.zip`` in the
service folder: ``manifest.jsonl`` (one ``{"source": "files/<source>"}`` line per row, in row
order; ``x.jsonl#3`` names line 3 of a tensor file) and the files under ``files/``. The zip's
sha256 and chunk digests go into the service's spec, and the job joins the device's retained job
list (``protos/fleet_batch.py``), which ``fleet/batch_channel.py`` publishes.

The device pulls the zip in chunks (verified, resumable, as packages), runs one agent batch job
and reports its state; when it has succeeded it sends its result lines in pages. Pages are
appended to ``device-rows.jsonl`` (a row already held is skipped: redelivery is harmless) and the
job's ``rows_received`` (held without a gap from index 0) is published back, so a device that
reconnects or restarts resends only what is missing. With every row held, the rows are joined
with the inputs into ``results.jsonl`` exactly as for a cloud batch (evaluation included), the
service ends ``succeeded``, and the job leaves the list: the device deletes its copy. A job that
fails on the device ends the service ``failed`` with the device's reason. Deleting the service
takes the job off the list, which cancels it on the device.

This class is the fleet channel's handler (``DeviceBatchHandler``): it is called on the channel's
worker thread, one message at a time, and never sees MQTT or protobuf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from control_plane.core.context import AppContext
from control_plane.services import batch
from control_plane.services.models import Service
from protos import fleet_batch

logger = logging.getLogger(__name__)

INPUT_ZIP = "device-input.zip"
ROWS = "device-rows.jsonl"


class JobsPublisher(Protocol):
    def publish_jobs(self, device_id: str) -> None: ...


def build_input(service_dir: Path, chunk_size: int) -> dict[str, Any]:
    """``device-input.zip`` from the service's ``inputs.jsonl``; its digest and chunk digests."""
    rows = batch.read_jsonl(service_dir / batch.INPUTS)
    path = service_dir / INPUT_ZIP
    manifest = []
    packed: set[str] = set()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for row in rows:
            source = str(row["source"])
            manifest.append(json.dumps({"source": f"files/{source}"}))
            member, file_path = _file_of(source, str(row["path"]))
            if member not in packed:
                zf.write(file_path, f"files/{member}")
                packed.add(member)
        zf.writestr("manifest.jsonl", "\n".join(manifest) + "\n")
    whole = hashlib.sha256()
    chunks = []
    with open(path, "rb") as f:
        while piece := f.read(chunk_size):
            whole.update(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
    return {
        "digest": whole.hexdigest(),
        "size": path.stat().st_size,
        "chunk_size": chunk_size,
        "chunk_sha256": chunks,
    }


def _file_of(source: str, path: str) -> tuple[str, str]:
    """The file a row's input is in: ``x.jsonl#3`` (line 3) is in ``x.jsonl``."""
    name, sep, line = source.rpartition("#")
    if sep and line.isdigit() and name.lower().endswith(".jsonl"):
        return name, path.rpartition("#")[0]
    return source, path


def new_job(service_dir: Path, chunk_size: int) -> dict[str, Any]:
    """The ``device_job`` part of a device batch service's spec."""
    return {
        "job_id": uuid.uuid4().hex[:16],
        "input": build_input(service_dir, chunk_size),
        "rows_received": 0,
    }


class DeviceBatches:
    """The services side of device batch jobs (see the module docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.root = ctx.settings.resolved_services_dir
        self.channel: JobsPublisher | None = None
        self._lock = threading.Lock()
        self._held: dict[str, set[int]] = {}  # service name -> row indexes in device-rows.jsonl

    def publish(self, device_id: str) -> None:
        if self.channel is not None:
            self.channel.publish_jobs(device_id)

    def forget(self, name: str) -> None:
        with self._lock:
            self._held.pop(name, None)

    # --- queries ------------------------------------------------------------------------------

    def _active(self, device_id: str | None = None) -> list[Service]:
        with self.ctx.sessions() as session:
            services = session.scalars(select(Service).where(Service.type == "batch")).all()
            out = [
                s
                for s in services
                if s.spec.get("device")
                and s.state not in batch.DONE
                and (device_id is None or s.spec["device"] == device_id)
            ]
            for s in out:
                session.expunge(s)
            return out

    def _by_job(self, device_id: str, job_id: str) -> Service:
        for s in self._active(device_id):
            if s.spec["device_job"]["job_id"] == job_id:
                return s
        raise LookupError(f"no batch job {job_id} for device {device_id}")

    def jobs_for(self, device_id: str) -> fleet_batch.BatchJobs:
        jobs = []
        for s in self._active(device_id):
            job, model = s.spec["device_job"], s.spec["models"][0]
            source = job["input"]
            jobs.append(
                fleet_batch.BatchJob(
                    job_id=job["job_id"],
                    model=model["model"],
                    version=model["version"],
                    input_digest=source["digest"],
                    input_size=source["size"],
                    chunk_size=source["chunk_size"],
                    chunk_sha256=tuple(bytes.fromhex(h) for h in source["chunk_sha256"]),
                    rows_received=int(job.get("rows_received", 0)),
                )
            )
        return fleet_batch.BatchJobs(device_id, tuple(jobs))

    def devices_with_jobs(self) -> list[str]:
        return sorted({s.spec["device"] for s in self._active()})

    def input_chunk(self, device_id: str, job_id: str, index: int) -> tuple[bytes, bytes]:
        service = self._by_job(device_id, job_id)
        source = service.spec["device_job"]["input"]
        if not 0 <= index < len(source["chunk_sha256"]):
            raise LookupError(f"chunk {index} out of range")
        with open(self.root / service.name / INPUT_ZIP, "rb") as f:
            f.seek(index * source["chunk_size"])
            data = f.read(source["chunk_size"])
        return data, bytes.fromhex(source["chunk_sha256"][index])

    # --- what the device says -----------------------------------------------------------------

    def on_state(self, device_id: str, state: fleet_batch.JobState) -> None:
        try:
            service = self._by_job(device_id, state.job_id)
        except LookupError:
            logger.info("state of unknown batch job %s from %s ignored", state.job_id, device_id)
            return
        progress = {
            "job_id": state.job_id,
            "state": state.state,
            # While the input is pulled the device knows no input count yet.
            "total": state.total or int(service.spec["input_info"]["count"]),
            "done": state.done,
            "failed": state.failed,
        }
        self._update(service.name, {"batch": progress})
        if state.state in ("FAILED", "CANCELED"):
            reason = state.error or f"device job {state.state.lower()}"
            batch.finish_service(self.ctx, service.name, "failed", f"{device_id}: {reason}", None)
            self.publish(device_id)
        elif state.state == "SUCCEEDED":
            self._complete_if_held(device_id, service.name)

    def on_rows(self, device_id: str, rows: fleet_batch.Rows) -> None:
        try:
            service = self._by_job(device_id, rows.job_id)
        except LookupError:
            logger.info("rows of unknown batch job %s from %s ignored", rows.job_id, device_id)
            return
        total = int(service.spec["input_info"]["count"])
        path = self.root / service.name / ROWS
        for offset, line in enumerate(rows.rows_json):  # the whole page is checked first
            index = rows.first_index + offset
            doc = json.loads(line)
            if not isinstance(doc, dict) or doc.get("index") != index or index >= total:
                raise ValueError(f"row {index} of job {rows.job_id}: not the agent's line")
        with self._lock:
            held = self._held_rows(service.name, path)
            fresh = []
            for offset, line in enumerate(rows.rows_json):
                index = rows.first_index + offset
                if index not in held:
                    fresh.append(line)
                    held.add(index)
            if fresh:
                try:
                    with open(path, "a+", encoding="utf-8") as out:
                        # A line torn by a crash is closed first (and skipped when read back).
                        torn = out.tell() > 0 and _last_byte(path) != b"\n"
                        out.write(("\n" if torn else "") + "".join(line + "\n" for line in fresh))
                        out.flush()
                        os.fsync(out.fileno())
                except BaseException:
                    self._held.pop(service.name, None)  # read back from the file next time
                    raise
            received = 0
            while received in held:
                received += 1
        job = {**service.spec["device_job"], "rows_received": received}
        self._update(service.name, {"device_job": job})
        if not self._complete_if_held(device_id, service.name):
            self.publish(device_id)  # tells the device where to resend from

    def _held_rows(self, name: str, path: Path) -> set[int]:
        held = self._held.get(name)
        if held is None:
            held = set()
            if path.exists():
                held = {int(r["index"]) for r in _read_rows(path)}
            self._held[name] = held
        return held

    def _complete_if_held(self, device_id: str, name: str) -> bool:
        """Once the device's job succeeded and every row is here: results, evaluation, done."""
        with self.ctx.sessions() as session:
            service = session.get(Service, name)
            if service is None or service.state in batch.DONE:
                return False
            spec = dict(service.spec)
        total = int(spec["input_info"]["count"])
        if (spec.get("batch") or {}).get("state") != "SUCCEEDED":
            return False
        if int(spec["device_job"].get("rows_received", 0)) < total:
            return False
        service_dir = self.root / name
        lines = {int(r["index"]): r for r in _read_rows(service_dir / ROWS)}
        ordered = [lines[i] for i in range(total)]
        fields = batch.collect(service_dir, ordered, spec)
        batch.finish_service(self.ctx, name, "succeeded", "", fields)
        self.forget(name)
        self.publish(device_id)
        return True

    def _update(self, name: str, fields: dict[str, Any]) -> None:
        with self.ctx.sessions() as session:
            service = session.get(Service, name)
            if service is not None and service.state not in batch.DONE:
                service.spec = {**service.spec, **fields}
                if service.state == "deploying":
                    service.state, service.reason = "running", ""
                session.commit()


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows held: every complete line (a line torn by a crash is skipped: it is resent)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("index"), int):
                out.append(doc)
    return out


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
