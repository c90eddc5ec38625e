"""Bringing data into a dataset: every import format funnels into one pipeline.

``import_items`` takes parsed ``ImportItem``s and a ``Source`` and, per item: reads the bytes,
hashes them, skips duplicates (same sha256 already in the dataset or earlier in this import),
probes the image, checks each annotation (label in the set, box inside the image, the dataset's
label rules) and writes the file to the object store. An item that fails any step is reported
with its name and reason and the rest carry on, except when the archive itself is at fault (a
forged or over-limit zip member, ``ArchiveRefused``): that refuses the whole import. The database
rows of the whole import are written in one transaction at the end; if that fails, or the import
is refused, the files written for it are removed again, so an import is never half-recorded.

Uploads (multipart) are spooled to disk by the web framework and read from there one at a time;
archives are read member by member from the zip without extracting them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import (
    ArchiveRefused,
    Conflict,
    InvalidRequest,
    PayloadTooLarge,
)
from control_plane.core.uploads import stage_upload
from control_plane.datasets import formats
from control_plane.datasets.formats import ImportFormat, ImportItem, ItemAnnotation
from control_plane.datasets.images import probe
from control_plane.datasets.models import Annotation, Dataset, Label, Sample
from control_plane.datasets.schemas import DuplicateItem, FolderImport, ImportReport, ItemError
from control_plane.datasets.service import (
    CLASSIFICATION,
    DatasetService,
    check_annotation,
    check_label_name,
    dataset_store,
)
from control_plane.datasets.sources import FolderSource, Source, ZipSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportOptions:
    add_labels: bool = True
    annotated_by: str = "import"


class UploadSource:
    """Uploaded files (already spooled to disk by the framework) as a ``Source``."""

    def __init__(self, uploads: list[tuple[str, BinaryIO]], max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self._files: dict[str, BinaryIO] = {}
        for i, (filename, stream) in enumerate(uploads):
            base = PurePosixPath((filename or f"file-{i}").replace("\\", "/")).name or f"file-{i}"
            name = base if base not in self._files else f"{base}#{i}"
            self._files[name] = stream

    def names(self) -> list[str]:
        return list(self._files)

    def exists(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        stream = self._files[name]
        data = stream.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            raise PayloadTooLarge(f"{name}: larger than the {self.max_file_bytes}-byte limit")
        return data


# An annotation checked and ready to insert: label name, x, y, w, h, source, creator, confidence.
_Ann = tuple[str, float | None, float | None, float | None, float | None, str, str, float]


@dataclass(slots=True)
class _Pending:
    """A checked item whose file is in the store: its sample row and annotations, not yet
    inserted. Plain values rather than ORM objects: building ``Sample`` / ``Annotation``
    instances (and assigning the relationship collection) cost more per file than reading,
    hashing and probing it."""

    row: dict[str, Any]
    annotations: list[_Ann]
    new_object: bool


@dataclass
class _Report:
    imported: int = 0
    duplicates: list[DuplicateItem] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    labels_added: list[str] = field(default_factory=list)

    def public(self) -> ImportReport:
        return ImportReport(
            imported=self.imported,
            duplicates=self.duplicates,
            errors=self.errors,
            labels_added=self.labels_added,
        )


class ImportService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = dataset_store(ctx)

    # --- entry points ------------------------------------------------------------------------

    def import_uploads(
        self,
        dataset_id: str,
        uploads: list[tuple[str, BinaryIO]],
        label: str | None,
        options: ImportOptions,
    ) -> ImportReport:
        """Loose files; ``label`` (optional) is given to each of them (classification)."""
        dataset = DatasetService(self.session, self.ctx).get(dataset_id)
        if not uploads:
            raise InvalidRequest("no files in the upload (multipart field 'files')")
        source = UploadSource(uploads, self.settings.datasets.max_file_bytes)
        items = [ImportItem(n, [ItemAnnotation(label)] if label else []) for n in source.names()]
        return self.import_items(dataset, source, items, options)

    def import_archive(
        self,
        dataset_id: str,
        stream: BinaryIO,
        fmt: ImportFormat,
        annotation_file: str | None,
        options: ImportOptions,
    ) -> ImportReport:
        """A zip archive in any import format; staged to disk, then read in place.

        The archive is refused whole (``ArchiveRefused``: 422 / 413, nothing imported) when it is
        unsafe, over a limit or has a forged member, as every uploaded zip is; only problems of
        one sample (an undecodable image, a bad annotation) are reported per item.
        """
        dataset = DatasetService(self.session, self.ctx).get(dataset_id)
        s = self.settings.datasets
        staged, _ = stage_upload(
            stream,
            self.settings.staging_dir,
            s.max_upload_bytes,
            ".zip",
            "dataset archive",
            durable=False,
        )
        try:
            with ZipSource(
                staged,
                max_members=s.max_archive_members,
                max_total_bytes=s.max_archive_bytes,
                max_file_bytes=s.max_file_bytes,
                what="dataset archive",
            ) as source:
                items = formats.parse(source, fmt, annotation_file)
                return self.import_items(dataset, source, items, options)
        finally:
            staged.unlink(missing_ok=True)

    def import_folder(self, dataset_id: str, spec: FolderImport) -> ImportReport:
        dataset = DatasetService(self.session, self.ctx).get(dataset_id)
        source = FolderSource.open(
            Path(spec.path),
            self.settings.datasets.import_roots,
            self.settings.datasets.max_file_bytes,
        )
        items = formats.parse(source, spec.format, spec.annotation_file)
        options = ImportOptions(add_labels=spec.add_labels, annotated_by=spec.annotated_by)
        return self.import_items(dataset, source, items, options)

    # --- the pipeline ------------------------------------------------------------------------

    def import_items(
        self, dataset: Dataset, source: Source, items: Iterable[ImportItem], options: ImportOptions
    ) -> ImportReport:
        report = _Report()
        labels: dict[str, Label] = {lb.name: lb for lb in dataset.labels}
        known: dict[str, int] = dict(
            self.session.execute(
                select(Sample.digest, Sample.id).where(Sample.dataset_id == dataset.id)
            ).all()
        )
        seen: dict[str, str] = {}
        pending: list[_Pending] = []
        max_pixels = self.settings.datasets.max_image_pixels
        now = utcnow()
        try:
            for item in items:
                if item.error:
                    report.errors.append(ItemError(item=item.name, reason=item.error))
                    continue
                try:
                    data = source.read(item.name)
                    digest = hashlib.sha256(data).hexdigest()
                    if digest in known:
                        report.duplicates.append(
                            DuplicateItem(item=item.name, sample_id=known[digest])
                        )
                        continue
                    if digest in seen:
                        report.duplicates.append(DuplicateItem(item=item.name, sample_id=None))
                        continue
                    info = probe(data, item.name, max_pixels)
                    anns = self._annotations(
                        dataset, labels, item, info.width, info.height, options, report
                    )
                except ArchiveRefused:
                    # A forged or over-limit member says the archive is hostile, not that one
                    # sample is bad: the whole import is refused (core/archives.py).
                    raise
                except (InvalidRequest, PayloadTooLarge) as exc:
                    report.errors.append(ItemError(item=item.name, reason=str(exc)))
                    continue
                new_object = self.store.put_bytes(digest, data)
                seen[digest] = item.name
                row = {
                    "dataset_id": dataset.id,
                    "digest": digest,
                    "source_name": item.name[:1000],
                    "media_type": info.media_type,
                    "size": len(data),
                    "width": info.width,
                    "height": info.height,
                    "split": item.split,
                    "created_at": now,
                }
                pending.append(_Pending(row, anns, new_object))
            self.store.finish_uploads()  # an S3 store uploads in the background: all stored now
            self._insert(pending, labels)
            self.session.commit()
        except BaseException as exc:
            self.session.rollback()
            with contextlib.suppress(Exception):
                self.store.finish_uploads()  # none still running when their objects go
            for p in pending:
                if p.new_object:
                    self.store.delete(p.row["digest"])
            if isinstance(exc, IntegrityError):
                raise Conflict(
                    f"dataset {dataset.name} changed during the import; nothing was imported"
                ) from None
            raise
        report.imported = len(pending)
        logger.info(
            "dataset %s: imported %d, %d duplicates, %d errors",
            dataset.name,
            report.imported,
            len(report.duplicates),
            len(report.errors),
        )
        return report.public()

    def _insert(self, pending: list[_Pending], labels: dict[str, Label]) -> None:
        """Rows of the whole import as two bulk INSERTs (samples, then annotations).

        The ORM unit of work costs milliseconds per object at 10,000 samples, and even the ORM's
        bulk INSERT takes twice the CPU of a Core INSERT on the session's connection (same
        transaction; 0.25 s vs 0.13 s for 10,000 sample rows), which keeps the database share
        of an import small next to reading, probing and writing the files.
        """
        self.session.flush()  # labels added by this import get their ids
        if not pending:
            return
        conn = self.session.connection()
        ids = dict(
            (digest, sid)
            for sid, digest in conn.execute(
                insert(Sample.__table__).returning(Sample.id, Sample.digest),
                [p.row for p in pending],
            )
        )
        label_ids = {name: label.id for name, label in labels.items()}
        now = utcnow()
        ann_rows = [
            {
                "sample_id": ids[p.row["digest"]],
                "label_id": label_ids[name],
                "x": x,
                "y": y,
                "w": w,
                "h": h,
                "source": source,
                "creator": creator,
                "confidence": confidence,
                "created_at": now,
            }
            for p in pending
            for name, x, y, w, h, source, creator, confidence in p.annotations
        ]
        if ann_rows:
            conn.execute(insert(Annotation.__table__), ann_rows)

    def _annotations(
        self,
        dataset: Dataset,
        labels: dict[str, Label],
        item: ImportItem,
        width: int,
        height: int,
        options: ImportOptions,
        report: _Report,
    ) -> list[_Ann]:
        """Checked annotations of one item; ``InvalidRequest`` naming the item if one is bad.

        Labels missing from the set are created (``add_labels``) only once the whole item is
        known to be good, so a rejected item never leaves a stray label behind. A
        classification item naming a label twice keeps it once.
        """
        out: list[_Ann] = []
        missing: list[str] = []
        seen: set[str] = set()
        classification = dataset.type == CLASSIFICATION
        for a in item.annotations:
            box = a.box
            if box is not None and a.normalized:
                cx, cy, w, h = box
                box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
            box = check_annotation(dataset, width, height, a.label, box, item.name)
            if a.label not in labels and a.label not in missing:
                if not options.add_labels:
                    raise InvalidRequest(f"{item.name}: label {a.label!r} is not in the label set")
                missing.append(a.label)
            if classification:
                if a.label in seen:
                    continue
                seen.add(a.label)
            x, y, w, h = box or (None, None, None, None)
            out.append(
                (
                    a.label,
                    x,
                    y,
                    w,
                    h,
                    a.source or "person",
                    a.creator if a.creator is not None else options.annotated_by,
                    1.0 if a.confidence is None else max(0.0, min(1.0, a.confidence)),
                )
            )
        if classification and len(seen) > 1 and not dataset.multi_label:
            raise InvalidRequest(f"{item.name}: {len(seen)} labels for a single-label dataset")
        for name in missing:
            check_label_name(name)
            label = Label(name=name, dataset=dataset)
            self.session.add(label)
            labels[name] = label
            report.labels_added.append(name)
        return out
