"""The model registry: model versions with lineage, converted into signed packages.

A version comes from a succeeded training job or from an upload. Registering records the version
(state ``converting``) and returns; the conversion runs in the app's ``Conversions`` executor as a
child process (``control_plane.registry.worker``). On success the package is stored exactly like an
upload (``PackageService.upload``: verified against the trust store, which holds the registry's own
key) and the version becomes ``ready`` with its package digest and parity report; on failure it
becomes ``failed`` with the reason.

Lineage is kept as columns (job, dataset version) and copies of what was true at registration
(hyperparameters, metrics, conversion settings); a dataset version used by a model records the
use, so it cannot be deleted while the model exists. A version whose package a deployment names
cannot be deleted (a foreign key from deployments says so: deployments sit above the registry).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.archives import ArchiveLimits, extract_zip
from control_plane.core.context import AppContext
from control_plane.core.database import describe_references, references
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.core.uploads import stage_upload
from control_plane.core.workers import default_mxnet_python, log_tail, worker_env
from control_plane.datasets.versions.service import VersionService
from control_plane.registry import job_inputs
from control_plane.registry.conversions import Conversions
from control_plane.registry.discovery import KINDS, SINGLE_FILES, find_model
from control_plane.registry.keys.service import signing_key_path
from control_plane.registry.models import ModelVersion, Package
from control_plane.registry.packages.service import PackageService
from control_plane.registry.schemas import ModelRegister, ModelVersionUpdate
from control_plane.training.service import TrainingService, model_info

if TYPE_CHECKING:
    from control_plane.training.models import TrainingJob

logger = logging.getLogger(__name__)

CONVERSION_TIMEOUT_S = 3600
_FRAMEWORKS = {
    "keras": "keras",
    "savedmodel": "tensorflow",
    "onnx": "onnx",
    "tflite": "tflite",
    "pytorch": "pytorch",
}


def model_ref(name: str, version: str) -> str:
    return f"{name}:{version}"


class ModelService:
    def __init__(
        self, session: Session, ctx: AppContext, conversions: Conversions | None = None
    ) -> None:
        """``conversions`` is needed to register versions; queries and deletes do without."""
        self.session = session
        self.ctx = ctx
        self._conversions = conversions
        self.root = ctx.settings.resolved_training_dir

    # --- queries -----------------------------------------------------------------------------

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)
        if name is not None:
            query = query.where(ModelVersion.name == name)
        return list(self.session.scalars(query).all())

    def get(self, name: str, version: str) -> ModelVersion:
        mv = self.session.scalars(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).first()
        if mv is None:
            raise NotFound(f"model {name} version {version} not found")
        return mv

    def by_package(self, digest: str) -> ModelVersion:
        mv = self.session.scalars(
            select(ModelVersion).where(ModelVersion.package_digest == digest)
        ).first()
        if mv is None:
            raise NotFound(f"no model version was registered as package {digest}")
        return mv

    def lineage(
        self, digest: str
    ) -> tuple[ModelVersion, TrainingJob | None, dict[str, Any] | None]:
        mv = self.by_package(digest)
        job = TrainingService(self.session, self.ctx).find(mv.job_id) if mv.job_id else None
        dataset = None
        if mv.dataset_id and mv.dataset_version:
            dv = VersionService(self.session, self.ctx).find(mv.dataset_id, mv.dataset_version)
            if dv is not None:
                dataset = {
                    "dataset_id": dv.dataset_id,
                    "version": dv.name,
                    "digest": dv.digest,
                    "sample_count": dv.sample_count,
                    "train_count": dv.train_count,
                    "validation_count": dv.validation_count,
                    "labels": sorted(dv.label_stats),
                }
        return mv, job, dataset

    def package_chunks(self, name: str, version: str) -> tuple[Package, Iterator[bytes]]:
        mv = self.get(name, version)
        if mv.state != "ready" or not mv.package_digest:
            raise Conflict(f"model {name} version {version} has no package ({mv.state})")
        package = self.session.get(Package, mv.package_digest)
        if package is None:
            raise NotFound(f"package {mv.package_digest} not found")
        blobs, digest, size = self.ctx.blobs, package.digest, package.size

        def chunks() -> Iterator[bytes]:
            offset = 0
            while offset < size:
                piece = blobs.read_range(digest, offset, 1 << 20)
                if not piece:
                    return
                offset += len(piece)
                yield piece

        return package, chunks()

    # --- registering -------------------------------------------------------------------------

    def _next_version(self, name: str) -> str:
        numbers = [
            int(v)
            for v in self.session.scalars(
                select(ModelVersion.version).where(ModelVersion.name == name)
            )
            if v.isdigit()
        ]
        return str(max(numbers, default=0) + 1)

    def _add(self, mv: ModelVersion) -> ModelVersion:
        self.session.add(mv)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"model {mv.name} version {mv.version} already exists") from None
        return mv

    def register_job(self, spec: ModelRegister) -> ModelVersion:
        """A succeeded job's model as a new version; converts in the background."""
        training = TrainingService(self.session, self.ctx)
        job = training.get(spec.job_id)
        if job.state != "succeeded":
            raise InvalidRequest(f"job {job.id} is {job.state}; only a succeeded job registers")
        output = training.output_dir(job.id)
        kind, source = find_model(output)
        info = model_info(output)
        samples = next(iter(sorted(output.rglob("parity_samples.npy"))), None)
        version_dir = self._version_dir(job.dataset_id, job.dataset_version)
        inputs = job_inputs.resolve(
            spec, kind, info, samples, version_dir, f"{job.dataset_id}/{job.dataset_version}"
        )
        key = signing_key_path(self.ctx)
        mv = self._add(
            ModelVersion(
                name=spec.name,
                version=spec.version or self._next_version(spec.name),
                description=spec.description,
                tags=dict(spec.tags),
                origin="training_job",
                source_kind=kind,
                source_framework="mxnet" if kind == "mxnet" else _FRAMEWORKS.get(kind, kind),
                job_id=job.id,
                dataset_id=job.dataset_id,
                dataset_version=job.dataset_version,
                hyperparameters=dict(job.hyperparameters),
                metrics=job.metrics,
                conversion={
                    "targets": inputs.targets,
                    "on_parity_fail": spec.on_parity_fail,
                    "input_shapes": spec.input_shapes or info.get("input_shapes"),
                    "labels": inputs.labels,
                    "labels_from": inputs.labels_from,
                    "preprocessing": inputs.preprocessing,
                    "postprocessing": inputs.postprocessing,
                    "parity_samples": inputs.gate_data,
                    **({"notes": inputs.notes} if inputs.notes else {}),
                },
            )
        )
        if job.dataset_id and job.dataset_version:
            VersionService(self.session, self.ctx).add_use(
                job.dataset_id, job.dataset_version, "model", model_ref(mv.name, mv.version)
            )
        self._start_conversion(mv, kind, source, samples, key, inputs.validation_images)
        return mv

    def _version_dir(self, dataset_id: str | None, name: str | None) -> Path | None:
        """The dataset version folder a job trained on, if it still exists."""
        if not dataset_id or not name:
            return None
        versions = VersionService(self.session, self.ctx)
        dv = versions.find(dataset_id, name)
        if dv is None:
            return None
        folder = versions.path(dv)
        return folder if folder.is_dir() else None

    def import_upload(
        self,
        stream: BinaryIO,
        filename: str,
        name: str,
        *,
        kind: str | None = None,
        version: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        labels: list[str] | None = None,
        input_shapes: dict[str, list[int]] | None = None,
        targets: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        postprocessing: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """A model file or zip (SavedModel, MXNet pair, ModelArts folder) as a new version.

        ``preprocessing`` / ``postprocessing`` are the package's declared processing (image
        decoding, softmax, top-k), so a plain ONNX file can take images and answer with labels;
        given, they replace what a ModelArts folder would declare."""
        if kind is not None and kind not in KINDS:
            raise InvalidRequest(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
        suffix = Path(filename).suffix.lower()
        staged, digest = stage_upload(
            stream,
            self.ctx.settings.staging_dir,
            self.ctx.settings.storage.max_upload_bytes,
            suffix,
            "model upload",
        )
        key = signing_key_path(self.ctx)
        folder = self.root / "imports" / digest[:16]
        created = not folder.exists()
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".zip":
                extract_zip(staged, folder, model_limits(self.ctx), what="model zip")
                found_kind, source = find_model(folder)
                if kind is not None and kind != found_kind:
                    raise InvalidRequest(f"the zip holds a {found_kind} model, not {kind}")
            else:
                found_kind = kind or SINGLE_FILES.get(suffix, "")
                if found_kind not in SINGLE_FILES.values():
                    raise InvalidRequest(
                        f"{filename}: upload an .onnx, .tflite, .keras, .h5, .pt2 or .pt file, or "
                        "a zip of a SavedModel, an MXNet pair or a ModelArts model folder"
                    )
                folder.mkdir(exist_ok=True)
                source = folder / f"model{suffix}"
                shutil.copyfile(staged, source)
        except BaseException:
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            staged.unlink(missing_ok=True)
        framework = "mxnet" if found_kind == "mxnet" else _FRAMEWORKS.get(found_kind, found_kind)
        mv = self._add(
            ModelVersion(
                name=name,
                version=version or self._next_version(name),
                description=description,
                tags=dict(tags or {}),
                origin="import",
                source_kind=found_kind,
                source_framework=framework,
                conversion={
                    "targets": targets,
                    "on_parity_fail": "drop",
                    "input_shapes": input_shapes,
                    "labels": labels,
                    "upload": {"filename": filename, "sha256": digest},
                    "parity_samples": "generated samples (an upload brings no data)",
                    **({"preprocessing": preprocessing} if preprocessing else {}),
                    **({"postprocessing": postprocessing} if postprocessing else {}),
                },
            )
        )
        self._start_conversion(mv, found_kind, source, None, key)
        return mv

    def _start_conversion(
        self,
        mv: ModelVersion,
        kind: str,
        source: Path,
        samples: Path | None,
        key: Path,
        validation_images: list[str] | None = None,
    ) -> None:
        work = self.root / "conversions" / str(mv.id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        c = mv.conversion
        spec = {
            "kind": kind,
            "source": str(source),
            "name": mv.name,
            "version": mv.version,
            "description": mv.description,
            "targets": c.get("targets"),
            "on_parity_fail": c.get("on_parity_fail", "drop"),
            "input_shapes": c.get("input_shapes"),
            "labels": c.get("labels"),
            "preprocessing": c.get("preprocessing"),
            "postprocessing": c.get("postprocessing"),
            "samples": str(samples) if samples else None,
            "validation_images": validation_images or [],
            "key": str(key),
            "out_dir": str(work / "out"),
            "mxnet_python": str(self.ctx.settings.training.mxnet_python or default_mxnet_python()),
        }
        (work / "spec.json").write_text(json.dumps(spec, indent=1))
        if self._conversions is None:
            raise RuntimeError("this ModelService was built without the conversion executor")
        self._conversions.submit(run_conversion, self.ctx, mv.id, work)
        logger.info("converting model %s %s (%s) from %s", mv.name, mv.version, kind, source)

    # --- changes -----------------------------------------------------------------------------

    def update(self, name: str, version: str, changes: ModelVersionUpdate) -> ModelVersion:
        mv = self.get(name, version)
        if changes.description is not None:
            mv.description = changes.description
        if changes.tags is not None:
            mv.tags = dict(changes.tags)
        self.session.commit()
        return mv

    def delete(self, name: str, version: str) -> None:
        mv = self.get(name, version)
        if mv.state == "converting":
            raise Conflict(f"model {name} version {version} is still converting")
        digest = mv.package_digest
        if mv.dataset_id and mv.dataset_version:
            VersionService(self.session, self.ctx).remove_use(
                mv.dataset_id, mv.dataset_version, "model", model_ref(name, version)
            )
        self.session.delete(mv)
        self.session.flush()
        if digest:
            used = references(self.session, Package.__table__.c.digest, digest)
            if used:
                self.session.rollback()
                raise Conflict(
                    f"model {name} version {version} is used by {describe_references(used)}"
                )
            package = self.session.get(Package, digest)
            if package is not None:
                self.session.delete(package)
        try:
            # Deployments name their package (a foreign key): deployments sit above the registry,
            # so the database, not an import, says the package is in use.
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(
                f"model {name} version {version} is used by a deployment of its package"
            ) from None
        if digest:
            self.ctx.blobs.delete(digest)
        shutil.rmtree(self.root / "conversions" / str(mv.id), ignore_errors=True)
        logger.info("deleted model %s version %s", name, version)


def run_conversion(ctx: AppContext, version_id: int, work: Path) -> None:
    """Background: run the conversion worker, store the package, record the outcome."""
    log = work / "conversion.log"
    result_path = work / "result.json"
    try:
        with open(log, "wb") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "control_plane.registry.worker", "spec.json", "result.json"],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=CONVERSION_TIMEOUT_S,
                env=worker_env(),
                check=False,
            )
        result: dict[str, Any] = (
            json.loads(result_path.read_text()) if result_path.is_file() else {}
        )
        if proc.returncode != 0 or "package" not in result:
            reason = result.get("error") or f"conversion exited with {proc.returncode}"
            _finish(ctx, version_id, None, result, f"{reason}\n{log_tail(log, 15)}".strip())
            return
        with ctx.sessions() as session, open(result["package"], "rb") as f:
            package, _ = PackageService(session, ctx).upload(f)
            digest = package.digest
        _finish(ctx, version_id, digest, result, "")
    except Exception as exc:
        logger.exception("conversion of model version %d failed", version_id)
        _finish(ctx, version_id, None, {}, f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work / "out", ignore_errors=True)


def _finish(
    ctx: AppContext, version_id: int, digest: str | None, result: dict[str, Any], error: str
) -> None:
    with ctx.sessions() as session:
        mv = session.get(ModelVersion, version_id)
        if mv is None:
            return
        mv.package_digest = digest
        mv.state = "ready" if digest else "failed"
        mv.error = error
        report = {k: v for k, v in result.items() if k not in ("package", "error")}
        mv.conversion_report = report or None
        if result.get("framework") and mv.origin == "import":
            mv.source_framework = str(result["framework"])
        session.commit()
        logger.info("model %s %s: %s %s", mv.name, mv.version, mv.state, digest or error[:200])


def model_limits(ctx: AppContext) -> ArchiveLimits:
    """How large an imported model directory zip may be, inflated.

    The per-file limit is the total: a model's weights are often one file holding nearly all of
    it, and extraction streams each member to disk, so a large member costs no extra memory.
    """
    s = ctx.settings.registry
    return ArchiveLimits(
        max_members=s.model_max_archive_members,
        max_total_bytes=s.model_max_archive_bytes,
        max_file_bytes=s.model_max_archive_bytes,
    )
