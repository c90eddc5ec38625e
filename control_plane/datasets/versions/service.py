"""Published dataset versions: immutable snapshots that training jobs read.

Publishing draws the train/validation split, then writes the version folder

```
V001/
  manifest.jsonl        one ModelArts manifest line per sample (source, usage, annotation[])
  data/<sha256>.<ext>   the files the manifest names (hard links to the object store)
  Annotations/<sha256>.xml   Pascal VOC boxes (object detection only; named by annotation-loc)
  version.json          the summary: counts, split parameters, label statistics, digest
```

into a temporary folder that is renamed into place only when complete, and records the version
in the database. With an S3-compatible store the folder goes to the bucket instead, without
``data/`` (the manifest names every file by sha256, which is its object's name), and is
materialised into a local folder on the nodes that read it (``control_plane.datasets.storage``).
The version digest is the sha256 of ``manifest.jsonl``, which itself names each file's sha256,
so the digest covers the content (and is the same whichever store holds the version).

The split is reproducible: samples are ordered by content digest (not by import order or id),
shuffled with ``random.Random(seed)`` within each stratum (the label, for classification) and the
train share allocated by largest remainders, so the whole version gets ``round(ratio * n)``
training samples and each label gets its share. Samples whose split is fixed (a manifest's
``usage``) keep it.

A version that something uses (``dataset_version_uses``: training jobs, models, batch
services) cannot be deleted; ``add_use`` / ``remove_use`` are for the training, registry and
services domains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.datasets import formats
from control_plane.datasets.formats import ExportAnnotation, ExportFormat, VersionItem
from control_plane.datasets.images import EXTENSIONS, MEDIA_TYPES
from control_plane.datasets.models import (
    Annotation,
    Dataset,
    DatasetVersion,
    DatasetVersionUse,
    Label,
    Sample,
)
from control_plane.datasets.schemas import VersionCreate
from control_plane.datasets.service import CLASSIFICATION, DETECTION, DatasetService, dataset_store

logger = logging.getLogger(__name__)

_EXT_BY_MEDIA = {MEDIA_TYPES[k]: EXTENSIONS[k] for k in MEDIA_TYPES}
USE_KINDS = ("training_job", "model", "batch_service", "notebook")


def version_name(n: int) -> str:
    return f"V{n:03d}"


def split_samples(keyed: list[tuple[str, str]], ratio: float, seed: int) -> dict[str, str]:
    """{digest: train | validation} for ``(digest, stratum)`` pairs; see the module docstring."""
    strata: dict[str, list[str]] = defaultdict(list)
    for digest, stratum in sorted(keyed):
        strata[stratum].append(digest)
    total_train = round(ratio * len(keyed))
    quotas = {s: ratio * len(ds) for s, ds in strata.items()}
    alloc = {s: math.floor(q) for s, q in quotas.items()}
    rest = total_train - sum(alloc.values())
    # Largest remainder first; ties broken by stratum name so the result is stable.
    for s in sorted(quotas, key=lambda s: (alloc[s] - quotas[s], s))[: max(rest, 0)]:
        alloc[s] += 1
    out: dict[str, str] = {}
    for s in sorted(strata):
        digests = strata[s]
        random.Random(f"{seed}:{s}").shuffle(digests)
        for i, d in enumerate(digests):
            out[d] = "train" if i < alloc[s] else "validation"
    return out


class VersionService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx
        self.store = dataset_store(ctx)
        self.datasets = DatasetService(session, ctx)

    def list(self, dataset_id: str) -> list[DatasetVersion]:
        self.datasets.get(dataset_id)
        return list(
            self.session.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == dataset_id)
                .order_by(DatasetVersion.id)
            ).all()
        )

    def find(self, dataset_id: str, name: str) -> DatasetVersion | None:
        return self.session.scalars(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset_id, DatasetVersion.name == name
            )
        ).first()

    def get(self, dataset_id: str, name: str) -> DatasetVersion:
        version = self.find(dataset_id, name)
        if version is None:
            raise NotFound(f"version {name} of dataset {dataset_id} not found")
        return version

    def path(self, version: DatasetVersion) -> Path:
        """The version's local folder; with an S3 store, materialised from the bucket on first
        use on this node (``DatasetStore.materialize``)."""
        return self.store.materialize(version.dataset_id, version.name)

    # --- publish -----------------------------------------------------------------------------

    def publish(self, dataset_id: str, spec: VersionCreate) -> DatasetVersion:
        """Publish the next version of a dataset.

        Two publishes of one dataset at once: on PostgreSQL the dataset row is locked (``SELECT
        ... FOR UPDATE``) for the whole publish, so the second waits and then publishes the next
        number; SQLite has no row locks, so there the loser of the race gets a Conflict and its
        half-written folder is removed, never the winner's.
        """
        dataset = self._lock_dataset(dataset_id)
        detection = dataset.type == DETECTION
        samples = self._labeled_samples(dataset_id)
        if not samples:
            raise InvalidRequest(f"dataset {dataset.name} has no labeled samples to publish")
        free = [s for s in samples if s.split is None]
        keyed = [(s.digest, _stratum(s.annotations) if not detection else "") for s in free]
        drawn = split_samples(keyed, spec.train_ratio, spec.seed)
        items = [s.item(s.split or drawn[s.digest]) for s in samples]

        number = dataset.versions_published + 1
        name = version_name(number)
        if self.store.version_dir(dataset_id, name).exists():
            raise Conflict(f"version folder {name} already exists")
        tmp = self.store.new_version_tmp(dataset_id)
        final = self.store.version_dir(dataset_id, name)
        remote = self.store.remote is not None  # S3: the manifest names objects, no data/ links
        try:
            digest = self._write_folder(tmp, items, detection, link_files=not remote)
            stats = _label_stats(items)
            train = sum(1 for it in items if it.split == "train")
            summary: dict[str, Any] = {
                "dataset": dataset.name,
                "dataset_id": dataset.id,
                "type": dataset.type,
                "version": name,
                "digest": digest,
                "train_ratio": spec.train_ratio,
                "seed": spec.seed,
                "sample_count": len(items),
                "train_count": train,
                "validation_count": len(items) - train,
                "labels": [lb.name for lb in dataset.labels],
                "label_stats": stats,
            }
            (tmp / "version.json").write_text(json.dumps(summary, indent=1) + "\n")
            if remote:
                try:
                    self.store.upload_version(tmp, dataset_id, name)
                except FileExistsError:
                    raise Conflict(f"version {name} was published concurrently") from None
                shutil.rmtree(tmp)
            else:
                try:
                    os.rename(tmp, final)
                except OSError:
                    if final.exists():  # another publish of the same number got there first
                        raise Conflict(f"version {name} was published concurrently") from None
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        version = DatasetVersion(
            dataset_id=dataset_id,
            name=name,
            description=spec.description,
            train_ratio=spec.train_ratio,
            seed=spec.seed,
            sample_count=len(items),
            train_count=summary["train_count"],
            validation_count=summary["validation_count"],
            label_stats=stats,
            digest=digest,
        )
        dataset.versions_published = number
        self.session.add(version)
        try:
            self.session.commit()
        except BaseException as exc:
            self.session.rollback()
            self.store.delete_version(dataset_id, name)
            if isinstance(exc, IntegrityError):
                raise Conflict(f"version {name} was published concurrently") from None
            raise
        logger.info(
            "published %s %s: %d samples (%d train), digest %s",
            dataset.name,
            name,
            len(items),
            version.train_count,
            digest,
        )
        return version

    def _labeled_samples(self, dataset_id: str) -> list[_Labeled]:
        """The dataset's samples with at least one annotation, by digest, as plain rows.

        One query of the columns a version needs (sample, annotation, label name), never ORM
        objects: building 2,000 samples, their annotations and a joined label each as objects
        was most of a publish's time, and more so on PostgreSQL, where every row of every
        column (timestamps included) is converted on the way in.
        """
        rows = self.session.execute(
            select(
                Sample.id,
                Sample.digest,
                Sample.media_type,
                Sample.width,
                Sample.height,
                Sample.split,
                Label.name,
                Annotation.x,
                Annotation.y,
                Annotation.w,
                Annotation.h,
                Annotation.source,
                Annotation.creator,
                Annotation.confidence,
            )
            .join(Annotation, Annotation.sample_id == Sample.id)
            .join(Label, Label.id == Annotation.label_id)
            .where(Sample.dataset_id == dataset_id)
            .order_by(Sample.digest, Sample.id, Annotation.id)
        ).all()
        out: list[_Labeled] = []
        for r in rows:
            if not out or out[-1].sample_id != r[0]:
                out.append(_Labeled(r[0], r[1], r[2], r[3], r[4], r[5], []))
            box = None if None in (r[7], r[8], r[9], r[10]) else (r[7], r[8], r[9], r[10])
            out[-1].annotations.append(ExportAnnotation(r[6], box, r[11], r[12], r[13]))
        return out

    def _lock_dataset(self, dataset_id: str) -> Dataset:
        """The dataset row, locked until this session commits (a no-op lock on SQLite).

        ``populate_existing`` reloads it: after waiting for another publish, the row read must be
        the one that publish committed (its ``versions_published``), not a stale copy.
        """
        dataset = self.session.scalars(
            select(Dataset)
            .where(Dataset.id == dataset_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} not found")
        return dataset

    def _write_folder(
        self, folder: Path, items: list[VersionItem], detection: bool, link_files: bool = True
    ) -> str:
        (folder / "data").mkdir()
        if detection:
            (folder / "Annotations").mkdir()
        lines = []
        for it in items:
            if link_files:
                self.store.link_into(it.digest, folder / it.path)
            if detection:
                xml = formats.voc_xml(it, Path(it.path).name)
                (folder / "Annotations" / f"{it.digest}.xml").write_bytes(xml)
            line = formats.manifest_line(it, detection)
            lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        manifest = ("\n".join(lines) + "\n").encode()
        (folder / "manifest.jsonl").write_bytes(manifest)
        return hashlib.sha256(manifest).hexdigest()

    # --- read back, export -------------------------------------------------------------------

    def items(self, version: DatasetVersion) -> list[VersionItem]:
        """The version's samples as its manifest (and VOC files) describe them."""
        folder = self.path(version)
        out = []
        with open(folder / "manifest.jsonl", encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                anns: list[ExportAnnotation] = []
                for a in entry["annotation"]:
                    source, creator = formats.annotated_by(a.get("annotated-by"))
                    conf = float(a.get("confidence", 1.0))
                    if a["type"] == formats.DETECTION:
                        data = (folder / a["annotation-loc"]).read_bytes()
                        _, boxes = formats.parse_voc_xml(data, a["annotation-loc"])
                        anns += [
                            ExportAnnotation(
                                b.label, b.box, source or "person", creator or "", conf
                            )
                            for b in boxes
                        ]
                    else:
                        anns.append(
                            ExportAnnotation(
                                a["name"], None, source or "person", creator or "", conf
                            )
                        )
                out.append(
                    VersionItem(
                        digest=entry["sha256"],
                        extension=Path(entry["source"]).suffix,
                        path=entry["source"],
                        split=formats.USAGE_TO_SPLIT[entry["usage"]] or "train",
                        width=entry["width"],
                        height=entry["height"],
                        annotations=tuple(anns),
                    )
                )
        return out

    def export(self, dataset_id: str, name: str, fmt: ExportFormat) -> Path:
        """A zip of the version in ``fmt``, in a staging file the caller removes."""
        dataset = self.datasets.get(dataset_id)
        version = self.get(dataset_id, name)
        if fmt in (ExportFormat.coco, ExportFormat.voc, ExportFormat.yolo) and (
            dataset.type != DETECTION
        ):
            raise InvalidRequest(f"{fmt.value} export is for object detection datasets")
        if fmt is ExportFormat.imagefolder and dataset.type != CLASSIFICATION:
            raise InvalidRequest("imagefolder export is for classification datasets")
        folder = self.path(version)
        out = self.store.staging_file(".zip")
        try:
            with zipfile.ZipFile(out, "w") as zf:
                if fmt is ExportFormat.manifest:
                    for path in sorted(folder.rglob("*")):
                        if path.is_file():
                            zf.write(path, path.relative_to(folder).as_posix())
                else:
                    items = self.items(version)
                    labels = sorted(version.label_stats) or formats.iter_labels(items)

                    def add(item: VersionItem, arcname: str) -> None:
                        zf.write(folder / item.path, arcname)

                    formats.WRITERS[fmt](zf, items, labels, add)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return out

    # --- delete and uses ---------------------------------------------------------------------

    def delete(self, dataset_id: str, name: str) -> None:
        version = self.get(dataset_id, name)
        if version.uses:
            users = ", ".join(f"{u.kind} {u.ref}" for u in version.uses)
            raise Conflict(f"version {name} is used by {users}; it cannot be deleted")
        self.session.delete(version)
        self.session.commit()
        self.store.delete_version(dataset_id, name)
        logger.info("deleted version %s of dataset %s", name, dataset_id)

    def add_use(self, dataset_id: str, name: str, kind: str, ref: str) -> DatasetVersionUse:
        """Record that ``kind`` ``ref`` (a training job, a model) depends on the version."""
        if kind not in USE_KINDS:
            raise InvalidRequest(f"use kind {kind!r} is not one of {USE_KINDS}")
        version = self.get(dataset_id, name)
        use = self.session.get(DatasetVersionUse, (version.id, kind, ref))
        if use is None:
            use = DatasetVersionUse(version_id=version.id, kind=kind, ref=ref)
            self.session.add(use)
            self.session.commit()
            self.session.refresh(version)
        return use

    def remove_use(self, dataset_id: str, name: str, kind: str, ref: str) -> None:
        version = self.get(dataset_id, name)
        use = self.session.get(DatasetVersionUse, (version.id, kind, ref))
        if use is not None:
            self.session.delete(use)
            self.session.commit()
            self.session.refresh(version)


@dataclass
class _Labeled:
    """A labeled sample as a published version needs it (``VersionService._labeled_samples``)."""

    sample_id: int
    digest: str
    media_type: str
    width: int
    height: int
    split: str | None
    annotations: list[ExportAnnotation]

    def item(self, split: str) -> VersionItem:
        ext = _EXT_BY_MEDIA.get(self.media_type, "")
        return VersionItem(
            digest=self.digest,
            extension=ext,
            path=f"data/{self.digest}{ext}",
            split=split,
            width=self.width,
            height=self.height,
            annotations=tuple(self.annotations),
        )


def _stratum(annotations: list[ExportAnnotation]) -> str:
    return "|".join(sorted({a.label for a in annotations}))


def _label_stats(items: list[VersionItem]) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for it in items:
        for label in {a.label for a in it.annotations}:
            s = stats.setdefault(
                label, {"samples": 0, "annotations": 0, "train": 0, "validation": 0}
            )
            s["samples"] += 1
            s[it.split] += 1
        for a in it.annotations:
            stats[a.label]["annotations"] += 1
    return dict(sorted(stats.items()))
