"""Training code and job outputs in the object store, when ``storage.url`` is ``s3://...``.

On one machine a job's code and outputs live in ``training_dir``. Several control-plane
replicas on several machines do not share that folder, and any of them may run a job or
register its model, so with an S3-compatible store the bucket is where these meet:

```
<prefix>/training/code/<code id>.zip            the uploaded zip (code id = its sha256)
<prefix>/training/jobs/<job id>/output/...      everything the job wrote to --train_url
<prefix>/training/jobs/<job id>/job.log         its log, as it was when the job ended
<prefix>/training/jobs/<job id>/outputs.json    {"files": {path: sha256}}, written last
```

- An upload stores the zip there; the node that runs a job (or lists its files) and lacks the
  extracted folder downloads the zip, checks its sha256 and extracts it with the same limits.
- When a job ends, the node that ran it uploads its outputs and log *before* recording the final
  state, so a replica that sees ``succeeded`` finds them. ``outputs.json`` is written last: a job
  without it has no outputs in the bucket (it failed to start, or its node died).
- A node asked for a finished job's outputs or log that it lacks (registration, scalars, the
  log of a job another replica ran) downloads them into its own ``training_dir``, every file
  checked against ``outputs.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from control_plane.core.archives import ArchiveLimits, extract_zip
from control_plane.core.context import AppContext

logger = logging.getLogger(__name__)

OUTPUTS_INDEX = "outputs.json"
LOG_NAME = "job.log"


def code_limits(ctx: AppContext) -> ArchiveLimits:
    """How large an uploaded training-code zip may be, inflated.

    No separate per-file limit: extraction streams each member to disk, so one large file (a
    pretrained checkpoint shipped with the code) costs no more memory than many small ones, and
    the total already bounds the disk a zip can fill.
    """
    s = ctx.settings
    return ArchiveLimits(
        max_members=s.training.code_max_archive_members,
        max_total_bytes=s.training.code_max_archive_bytes,
        max_file_bytes=s.training.code_max_archive_bytes,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class JobBucket:
    """The training side of the object store (``objects``: ``core.s3.S3Objects``)."""

    def __init__(self, objects: Any) -> None:
        self.objects = objects

    @classmethod
    def of(cls, objects: Any) -> JobBucket | None:
        """The bucket for ``AppContext.objects``; None when storage is local folders."""
        return cls(objects) if objects is not None else None

    # --- code --------------------------------------------------------------------------------

    @staticmethod
    def _code(code_id: str) -> str:
        return f"training/code/{code_id}.zip"

    def put_code(self, code_id: str, zip_path: Path) -> None:
        """Store the uploaded zip (once: its name is its content)."""
        if not self.objects.exists(self._code(code_id)):
            self.objects.put_file(self._code(code_id), zip_path, sha256=code_id)

    def fetch_code(self, code_id: str, folder: Path, limits: ArchiveLimits) -> bool:
        """Extract the stored zip into ``folder`` (absent before); False when the bucket lacks
        it. The zip is checked against its name and extracted all or nothing."""
        name = self._code(code_id)
        if not self.objects.exists(name):
            return False
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetch-") as tmp:
            staged = Path(tmp) / "code.zip"
            self.objects.download(name, staged, sha256=code_id)
            if not folder.exists():
                extract_zip(staged, folder, limits, what="training code")
        logger.info("training code %s fetched from the object store", code_id)
        return True

    # --- outputs -----------------------------------------------------------------------------

    @staticmethod
    def _job(job_id: str, name: str) -> str:
        return f"training/jobs/{job_id}/{name}"

    def put_outputs(self, job_id: str, work: Path) -> int:
        """Upload ``work/output/**`` and ``work/job.log``, then the index; returns the file
        count. Links are skipped (a job's output is its own files)."""
        files: dict[str, str] = {}
        output = work / "output"
        paths = sorted(p for p in output.rglob("*") if p.is_file() and not p.is_symlink())
        for path in paths:
            rel = "output/" + path.relative_to(output).as_posix()
            files[rel] = _sha256(path)
            self.objects.put_file(self._job(job_id, rel), path, sha256=files[rel])
        log = work / LOG_NAME
        if log.is_file():
            files[LOG_NAME] = _sha256(log)
            self.objects.put_file(self._job(job_id, LOG_NAME), log, sha256=files[LOG_NAME])
        index = json.dumps({"files": files}, sort_keys=True).encode()
        self.objects.put_bytes(self._job(job_id, OUTPUTS_INDEX), index)
        logger.info("job %s: %d output file(s) stored in the object store", job_id, len(files))
        return len(files)

    def fetch_outputs(self, job_id: str, work: Path) -> bool:
        """Download the job's stored outputs and log into ``work`` (replacing ``work/output``
        whole once every file is in and checked); False when the bucket holds none."""
        index_name = self._job(job_id, OUTPUTS_INDEX)
        try:
            files = json.loads(self.objects.read(index_name))["files"]
        except FileNotFoundError:
            return False
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work, prefix=".fetch-") as tmp:
            staged = Path(tmp)
            for rel, digest in files.items():
                target = (staged / rel).resolve()
                if not target.is_relative_to(staged.resolve()) or ".." in Path(rel).parts:
                    raise ValueError(f"job {job_id}: unsafe output name {rel!r} in the store")
                self.objects.download(self._job(job_id, rel), target, sha256=digest)
            (staged / "output").mkdir(exist_ok=True)
            shutil.rmtree(work / "output", ignore_errors=True)
            (staged / "output").rename(work / "output")
            if (staged / LOG_NAME).is_file():
                (staged / LOG_NAME).replace(work / LOG_NAME)
        logger.info("job %s: outputs fetched from the object store", job_id)
        return True
