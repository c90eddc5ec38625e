"""Training jobs: code uploads, job creation, versions (re-runs), cancel, logs and scalars.

The service only records intent in the database and wakes the runner
(``control_plane.training.runner``), which owns every process; nothing long runs inside a
request. A job that reads a dataset version registers a use of it (``dataset_version_uses``), so
the version cannot be deleted while the job exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.archives import check_relative, extract_zip
from control_plane.core.context import AppContext
from control_plane.core.database import describe_references, references
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.core.uploads import stage_upload
from control_plane.datasets.versions.service import VersionService
from control_plane.training.algorithms import BUILTIN, Algorithm
from control_plane.training.bucket import JobBucket, code_limits
from control_plane.training.events import read_scalars
from control_plane.training.models import TrainingJob
from control_plane.training.runner import FINAL_STATES, JobFolders, JobRunner
from control_plane.training.schemas import JobCreate, JobRerun, JobResources
from control_plane.training.sdk import edge_training

logger = logging.getLogger(__name__)

SCRIPT = "script"


def algorithms() -> list[Algorithm]:
    """The built-in algorithms (what ``GET /training/algorithms`` lists, and the dashboard's
    job form offers)."""
    return list(BUILTIN.values())


class TrainingService:
    def __init__(self, session: Session, ctx: AppContext, runner: JobRunner | None = None) -> None:
        """``runner`` is needed to start and cancel jobs; reading jobs and their files is not."""
        self.session = session
        self.ctx = ctx
        self._runner = runner
        self.folders = runner or JobFolders(ctx.settings.resolved_training_dir)
        self.bucket = JobBucket.of(ctx.objects)

    @property
    def runner(self) -> JobRunner:
        if self._runner is None:
            raise RuntimeError("this TrainingService was built without the job runner")
        return self._runner

    # --- code --------------------------------------------------------------------------------

    def upload_code(self, stream: BinaryIO) -> tuple[str, list[str]]:
        """Store a zip of training code by its sha256 (the same zip twice is stored once)."""
        staged, digest = stage_upload(
            stream,
            self.ctx.settings.staging_dir,
            self.ctx.settings.storage.max_upload_bytes,
            ".zip",
            "training code",
        )
        try:
            folder = self.folders.code_dir(digest)
            folder.parent.mkdir(parents=True, exist_ok=True)
            if not folder.exists():
                extract_zip(staged, folder, code_limits(self.ctx), what="training code")
            if self.bucket is not None:  # for the replicas and nodes that lack this folder
                self.bucket.put_code(digest, staged)
        finally:
            staged.unlink(missing_ok=True)
        logger.info("stored training code %s", digest)
        return digest, self.code_files(digest)

    def code_files(self, code_id: str) -> list[str]:
        folder = self.folders.code_dir(code_id)
        if len(code_id) == 64 and not folder.is_dir() and self.bucket is not None:
            self.bucket.fetch_code(code_id, folder, code_limits(self.ctx))
        if len(code_id) != 64 or not folder.is_dir():
            raise NotFound(f"training code {code_id} not found")
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    # --- jobs --------------------------------------------------------------------------------

    def create(self, spec: JobCreate, parent: TrainingJob | None = None) -> TrainingJob:
        self._check(spec)
        latest = self.session.scalar(
            select(func.max(TrainingJob.version)).where(TrainingJob.name == spec.name)
        )
        if latest is not None and parent is None:
            raise Conflict(
                f"a job named {spec.name} exists; re-run it (POST /training/jobs/{{id}}/versions) "
                "to make a new version"
            )
        job = TrainingJob(
            id=uuid.uuid4().hex[:16],
            name=spec.name,
            version=(latest or 0) + 1,
            parent_id=parent.id if parent else None,
            description=spec.description,
            dataset_id=spec.dataset_id,
            dataset_version=spec.dataset_version,
            data_path=spec.data_path,
            algorithm=spec.algorithm,
            framework=spec.framework.value,
            code_id=spec.code_id,
            boot_file=spec.boot_file,
            hyperparameters=dict(spec.hyperparameters),
            timeout_s=spec.timeout_s or self.ctx.settings.training.timeout_s,
            resources=spec.resources.model_dump(exclude_none=True) if spec.resources else None,
        )
        self.session.add(job)
        self.session.commit()
        if job.dataset_id and job.dataset_version:
            VersionService(self.session, self.ctx).add_use(
                job.dataset_id, job.dataset_version, "training_job", job.id
            )
        logger.info("queued job %s (%s v%d, %s)", job.id, job.name, job.version, job.algorithm)
        self.runner.wake()
        return job

    def _check(self, spec: JobCreate) -> None:
        if spec.algorithm in BUILTIN:
            algo = BUILTIN[spec.algorithm]
            if spec.framework.value != "tensorflow":
                raise InvalidRequest(f"{algo.name} is a TensorFlow/Keras algorithm")
            if spec.code_id:
                raise InvalidRequest("built-in algorithms take no code")
        elif spec.algorithm == SCRIPT:
            if not spec.code_id or not spec.boot_file:
                raise InvalidRequest("a script job needs code_id and boot_file")
            boot = check_relative(spec.boot_file, "boot file")
            if boot not in self.code_files(spec.code_id):
                raise InvalidRequest(f"boot file {boot} is not in code {spec.code_id}")
        else:
            known = ", ".join([*BUILTIN, SCRIPT])
            raise InvalidRequest(f"unknown algorithm {spec.algorithm!r} (known: {known})")
        if spec.dataset_id or spec.dataset_version:
            if spec.data_path:
                raise InvalidRequest("name a dataset version or a data_path, not both")
            if not (spec.dataset_id and spec.dataset_version):
                raise InvalidRequest("a dataset version needs dataset_id and dataset_version")
            versions = VersionService(self.session, self.ctx)
            versions.get(spec.dataset_id, spec.dataset_version)
            dataset = versions.datasets.get(spec.dataset_id)
            wanted = BUILTIN[spec.algorithm].input if spec.algorithm in BUILTIN else None
            if wanted not in (None, dataset.type):
                raise InvalidRequest(f"{spec.algorithm} needs {wanted} data, not {dataset.type}")
        elif spec.data_path:
            roots = self.ctx.settings.datasets.import_roots
            real = Path(os.path.realpath(spec.data_path))
            if not any(real.is_relative_to(os.path.realpath(r)) for r in roots):
                raise InvalidRequest(f"data_path {spec.data_path}: not inside an allowed root")
            if not real.exists():
                raise InvalidRequest(f"data_path {spec.data_path}: does not exist")
            spec.data_path = str(real)
        elif spec.algorithm in BUILTIN:
            raise InvalidRequest(f"{spec.algorithm} needs a dataset version or a data_path")

    def rerun(self, job_id: str, changes: JobRerun) -> TrainingJob:
        old = self.get(job_id)
        spec = JobCreate(
            name=old.name,
            description=old.description if changes.description is None else changes.description,
            algorithm=old.algorithm,
            framework=old.framework,  # type: ignore[arg-type]
            dataset_id=old.dataset_id,
            dataset_version=old.dataset_version,
            data_path=old.data_path,
            code_id=old.code_id,
            boot_file=old.boot_file,
            hyperparameters={**old.hyperparameters, **changes.hyperparameters},
            timeout_s=changes.timeout_s or old.timeout_s,
            resources=JobResources(**old.resources) if old.resources else None,
        )
        return self.create(spec, parent=old)

    def list(self, name: str | None = None, state: str | None = None) -> list[TrainingJob]:
        query = select(TrainingJob).order_by(TrainingJob.created_at, TrainingJob.version)
        if name:
            query = query.where(TrainingJob.name == name)
        if state:
            query = query.where(TrainingJob.state == state)
        return list(self.session.scalars(query).all())

    def find(self, job_id: str) -> TrainingJob | None:
        return self.session.get(TrainingJob, job_id)

    def get(self, job_id: str) -> TrainingJob:
        job = self.session.get(TrainingJob, job_id)
        if job is None:
            raise NotFound(f"training job {job_id} not found")
        return job

    def cancel(self, job_id: str) -> TrainingJob:
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state}")
        self.runner.cancel(job_id)
        self.session.expire_all()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.state not in FINAL_STATES:
            raise Conflict(f"job {job_id} is {job.state}; cancel it first")
        used = references(self.session, TrainingJob.__table__.c.id, job_id)
        if used:
            raise Conflict(f"job {job_id} is the lineage of {describe_references(used)}")
        if job.dataset_id and job.dataset_version:
            VersionService(self.session, self.ctx).remove_use(
                job.dataset_id, job.dataset_version, "training_job", job.id
            )
        self.session.delete(job)
        try:
            # Registered model versions name their job (a RESTRICT foreign key): the registry
            # sits above training, so the database, not an import, says the job is in use.
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(
                f"job {job_id} is the lineage of registered model versions; delete them first"
            ) from None
        shutil.rmtree(self.folders.work_dir(job_id), ignore_errors=True)

    def log_path(self, job_id: str) -> Path:
        job = self.get(job_id)
        path = self.folders.log_path(job_id)
        if not path.is_file():
            self._fetch_outputs(job)
        return path

    def output_dir(self, job_id: str) -> Path:
        job = self.get(job_id)
        path = self.folders.output_dir(job.id)
        if not path.is_dir():
            self._fetch_outputs(job)
        return path

    def _fetch_outputs(self, job: TrainingJob) -> None:
        """A finished job another node ran: its outputs and log from the object store."""
        if self.bucket is not None and job.state in FINAL_STATES:
            self.bucket.fetch_outputs(job.id, self.folders.work_dir(job.id))

    def event_dir(self, job_id: str) -> Path:
        return self.output_dir(job_id) / edge_training.TENSORBOARD_DIR

    def scalars(self, job_id: str) -> dict[str, dict[str, list[dict[str, float]]]]:
        return read_scalars(self.event_dir(job_id))


def model_info(output: Path) -> dict[str, Any]:
    """What the training script said about its model (``edge_training.MODEL_INFO_FILE``)."""
    path = output / edge_training.MODEL_INFO_FILE
    if not path.is_file():
        return {}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except ValueError:
        return {}
