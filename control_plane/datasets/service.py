"""Datasets, their label sets, samples and annotations: every state change of labeling.

Rules enforced here (not in routes), so imports, the API and later model pre-labeling share them:

- an annotation's label must be in the dataset's label set;
- classification annotations carry no box; detection annotations carry one, inside the image;
- a single-label classification sample carries at most one label.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.datasets.images import probe
from control_plane.datasets.models import (
    Annotation,
    Dataset,
    DatasetVersion,
    DatasetVersionUse,
    Label,
    Sample,
)
from control_plane.datasets.schemas import (
    AnnotationIn,
    BulkLabel,
    DatasetCreate,
    DatasetStats,
    LabelStat,
)
from control_plane.datasets.storage import DatasetStore

logger = logging.getLogger(__name__)

CLASSIFICATION = "image_classification"
DETECTION = "object_detection"
# Boxes may overshoot the image by this many pixels (rounding in other tools' exports).
BOX_TOLERANCE = 0.5
_A2 = aliased(Annotation)


@functools.lru_cache(maxsize=8)
def _store(root: Path, thumbnail_size: int, remote: Any) -> DatasetStore:
    return DatasetStore(root, thumbnail_size, remote)


def dataset_store(ctx: AppContext) -> DatasetStore:
    s = ctx.settings
    return _store(s.resolved_dataset_dir, s.datasets.thumbnail_size, ctx.objects)


@dataclass(frozen=True)
class SampleListing:
    """A page of samples as plain rows: ``samples`` hold the ``SAMPLE_FIELDS`` (named as in
    ``SamplePublic``), ``annotations`` map a sample id to its rows of ``ANNOTATION_FIELDS``
    (``label`` is the label's name), in id order."""

    total: int
    samples: list[Row[Any]]
    annotations: dict[int, list[Row[Any]]]


_SAMPLE_COLUMNS = (
    Sample.id,
    Sample.digest,
    Sample.source_name,
    Sample.media_type,
    Sample.size,
    Sample.width,
    Sample.height,
    Sample.split,
    Sample.created_at,
)
SAMPLE_FIELDS = tuple(c.key for c in _SAMPLE_COLUMNS)
_ANNOTATION_COLUMNS = (
    Annotation.sample_id,
    Annotation.id,
    Label.name.label("label"),
    Annotation.x,
    Annotation.y,
    Annotation.w,
    Annotation.h,
    Annotation.source,
    Annotation.creator,
    Annotation.confidence,
    Annotation.created_at,
)
ANNOTATION_FIELDS = tuple(c.key for c in _ANNOTATION_COLUMNS)
_PAGE_ANNOTATIONS = (
    select(*_ANNOTATION_COLUMNS)
    .join(Label, Label.id == Annotation.label_id)
    .where(Annotation.sample_id.in_(bindparam("ids", expanding=True)))
    .order_by(Annotation.sample_id, Annotation.id)
)


@dataclass(frozen=True)
class SampleFilter:
    label: str | None = None
    unlabeled: bool = False
    split: str | None = None


def check_annotation(
    dataset: Dataset, width: int, height: int, label: str, box: Sequence[float] | None, where: str
) -> tuple[float, float, float, float] | None:
    """The box clamped to the image, or ``InvalidRequest`` naming ``where`` if the annotation
    breaks the dataset's rules. Overshoot within ``BOX_TOLERANCE`` (float rounding in other
    tools' exports) is clamped rather than refused."""
    if dataset.type == CLASSIFICATION and box is not None:
        raise InvalidRequest(
            f"{where}: label {label!r} has a box; {dataset.name} is classification"
        )
    if dataset.type == DETECTION:
        if box is None:
            raise InvalidRequest(f"{where}: label {label!r} needs a box (object detection)")
        x, y, w, h = box
        t = BOX_TOLERANCE
        if not (
            w > 0 and h > 0 and x >= -t and y >= -t and x + w <= width + t and y + h <= height + t
        ):
            raise InvalidRequest(
                f"{where}: box {label!r} ({x:g}, {y:g}, {w:g}, {h:g}) is outside the "
                f"{width}x{height} image"
            )
        x, y = max(0.0, x), max(0.0, y)
        return (x, y, min(w, width - x), min(h, height - y))
    return None


class DatasetService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx
        self.store = dataset_store(ctx)

    # --- datasets ----------------------------------------------------------------------------

    def create(self, spec: DatasetCreate) -> Dataset:
        if spec.multi_label and spec.type != CLASSIFICATION:
            raise InvalidRequest("multi_label applies to image_classification only")
        names = list(dict.fromkeys(n.strip() for n in spec.labels))
        for n in names:
            check_label_name(n)
        dataset = Dataset(
            id=uuid.uuid4().hex[:16],
            name=spec.name,
            type=spec.type.value,
            multi_label=spec.multi_label,
            description=spec.description,
            labels=[Label(name=n) for n in names],
        )
        self.session.add(dataset)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"a dataset named {spec.name!r} already exists") from None
        logger.info("created dataset %s (%s, %s)", dataset.name, dataset.id, dataset.type)
        return dataset

    def list(self) -> list[Dataset]:
        return list(self.session.scalars(select(Dataset).order_by(Dataset.created_at)).all())

    def get(self, dataset_id: str) -> Dataset:
        dataset = self.session.get(Dataset, dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} not found")
        return dataset

    def sample_count(self, dataset_id: str) -> int:
        return int(
            self.session.scalar(
                select(func.count()).select_from(Sample).where(Sample.dataset_id == dataset_id)
            )
            or 0
        )

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset with its samples and versions, unless a version is in use."""
        dataset = self.get(dataset_id)
        used = self.session.scalars(
            select(DatasetVersion.name)
            .join(DatasetVersionUse)
            .where(DatasetVersion.dataset_id == dataset_id)
        ).all()
        if used:
            raise Conflict(f"dataset {dataset.name}: versions {sorted(set(used))} are in use")
        digests = set(
            self.session.scalars(select(Sample.digest).where(Sample.dataset_id == dataset_id))
        )
        self.session.delete(dataset)
        self.session.commit()
        shutil.rmtree(self.store.versions / dataset_id, ignore_errors=True)
        self._drop_unreferenced(digests)
        logger.info("deleted dataset %s (%s)", dataset.name, dataset_id)

    def _drop_unreferenced(self, digests: set[str]) -> None:
        if not digests:
            return
        still = set(self.session.scalars(select(Sample.digest).where(Sample.digest.in_(digests))))
        for d in digests - still:
            self.store.delete(d)

    # --- labels ------------------------------------------------------------------------------

    def label(self, dataset: Dataset, name: str) -> Label:
        for label in dataset.labels:
            if label.name == name:
                return label
        raise NotFound(f"label {name!r} not in the label set of {dataset.name}")

    def add_label(self, dataset_id: str, name: str) -> Dataset:
        dataset = self.get(dataset_id)
        check_label_name(name)
        if any(lb.name == name for lb in dataset.labels):
            raise Conflict(f"label {name!r} already exists")
        dataset.labels.append(Label(name=name))
        self.session.commit()
        return dataset

    def rename_label(self, dataset_id: str, name: str, new_name: str) -> Dataset:
        dataset = self.get(dataset_id)
        label = self.label(dataset, name)
        check_label_name(new_name)
        if new_name != name and any(lb.name == new_name for lb in dataset.labels):
            raise Conflict(f"label {new_name!r} already exists; merge {name!r} into it instead")
        label.name = new_name
        self.session.commit()
        return dataset

    def merge_label(self, dataset_id: str, name: str, into: str) -> Dataset:
        """Move every annotation of ``name`` to ``into`` and drop ``name``.

        For classification, a sample that carried both keeps one ``into`` annotation.
        """
        dataset = self.get(dataset_id)
        source, target = self.label(dataset, name), self.label(dataset, into)
        if source.id == target.id:
            raise InvalidRequest(f"cannot merge label {name!r} into itself")
        if dataset.type == CLASSIFICATION:
            both = exists().where(Annotation.sample_id == _A2.sample_id, _A2.label_id == target.id)
            self.session.execute(
                delete(Annotation)
                .where(Annotation.label_id == source.id, both)
                .execution_options(synchronize_session=False)
            )
        self.session.execute(
            Annotation.__table__.update()
            .where(Annotation.label_id == source.id)
            .values(label_id=target.id)
        )
        dataset.labels.remove(source)
        self.session.commit()
        self.session.expire_all()
        return self.get(dataset_id)

    def delete_label(self, dataset_id: str, name: str) -> Dataset:
        """Remove the label and every annotation that uses it."""
        dataset = self.get(dataset_id)
        label = self.label(dataset, name)
        self.session.execute(delete(Annotation).where(Annotation.label_id == label.id))
        dataset.labels.remove(label)
        self.session.commit()
        self.session.expire_all()
        return self.get(dataset_id)

    def stats(self, dataset_id: str) -> DatasetStats:
        dataset = self.get(dataset_id)
        total = self.sample_count(dataset_id)
        labeled = int(
            self.session.scalar(
                select(func.count(func.distinct(Annotation.sample_id)))
                .join(Sample)
                .where(Sample.dataset_id == dataset_id)
            )
            or 0
        )
        rows = self.session.execute(
            select(
                Label.name,
                func.count(func.distinct(Annotation.sample_id)),
                func.count(Annotation.id),
            )
            .select_from(Label)
            .outerjoin(Annotation, Annotation.label_id == Label.id)
            .where(Label.dataset_id == dataset_id)
            .group_by(Label.name)
            .order_by(Label.name)
        ).all()
        splits = dict(
            self.session.execute(
                select(func.coalesce(Sample.split, "unassigned"), func.count())
                .where(Sample.dataset_id == dataset.id)
                .group_by(Sample.split)
            ).all()
        )
        return DatasetStats(
            samples=total,
            labeled=labeled,
            unlabeled=total - labeled,
            splits={k: int(v) for k, v in splits.items()},
            labels=[LabelStat(name=n, samples=s, annotations=a) for n, s, a in rows],
        )

    # --- samples -----------------------------------------------------------------------------

    def list_samples(
        self, dataset_id: str, flt: SampleFilter, offset: int, limit: int
    ) -> SampleListing:
        """One page of samples with their annotations, in three indexed queries (four with a
        label filter).

        The listing is the hottest read of labeling, so it reads plain rows (SQL expression
        language, no ORM identity map or relationship loaders) and never touches files:
        thumbnails are made by their own endpoint, on first request. The queries are the count,
        the page, and every annotation of the page joined with its label name. The dataset
        itself is only looked up when the count is 0 (to tell "no samples" from "no dataset"),
        or to resolve the label filter to its id.

        A label filter is an ``IN`` over the label's annotations, which the
        ``(label_id, sample_id)`` index answers without touching the table; a correlated
        ``EXISTS`` per sample would probe the annotation index once for every sample of the
        dataset, which is what made filtered pages slow.
        """
        # Plain Core execution on the session's connection: ORM result processing (even of
        # column-only selects) was a good part of the page's time.
        conn = self.session.connection()
        where = [Sample.dataset_id == dataset_id]
        if flt.label is not None:
            label_id = conn.execute(
                select(Label.id).where(Label.dataset_id == dataset_id, Label.name == flt.label)
            ).scalar()
            if label_id is None:  # NotFound naming the dataset or the label
                label_id = self.label(self.get(dataset_id), flt.label).id
            where.append(
                Sample.id.in_(select(Annotation.sample_id).where(Annotation.label_id == label_id))
            )
        if flt.unlabeled:
            where.append(~exists().where(Annotation.sample_id == Sample.id))
        if flt.split is not None:
            where.append(Sample.split == flt.split)
        total = int(conn.execute(select(func.count(Sample.id)).where(*where)).scalar() or 0)
        if total == 0:
            self.get(dataset_id)  # 404 for an unknown dataset, an empty page otherwise
            return SampleListing(0, [], {})
        rows = conn.execute(
            select(*_SAMPLE_COLUMNS).where(*where).order_by(Sample.id).offset(offset).limit(limit)
        ).all()
        annotations: dict[int, list[Row[Any]]] = {}
        if rows:
            # The page's ids go in as one expanding parameter: a literal list would be coerced
            # into the statement element by element on every call.
            for a in conn.execute(_PAGE_ANNOTATIONS, {"ids": [r[0] for r in rows]}).all():
                annotations.setdefault(a[0], []).append(a)
        return SampleListing(total, list(rows), annotations)

    def sample(self, dataset_id: str, sample_id: int) -> Sample:
        sample = self.session.get(Sample, sample_id)
        if sample is None or sample.dataset_id != dataset_id:
            raise NotFound(f"sample {sample_id} not found in dataset {dataset_id}")
        return sample

    def sample_file(self, dataset_id: str, sample_id: int) -> tuple[Path, str]:
        sample = self.sample(dataset_id, sample_id)
        return self.store.local_object(sample.digest), sample.media_type

    def thumbnail(self, dataset_id: str, sample_id: int) -> Path:
        return self.store.thumbnail(self.sample(dataset_id, sample_id).digest)

    def add_sample(
        self,
        dataset_id: str,
        data: bytes,
        name: str,
        annotation: AnnotationIn | None = None,
    ) -> tuple[Sample, bool]:
        """One image as a sample of a classification dataset, with an optional label (added to
        the label set when missing); (sample, new). Flushed, not committed: the caller commits
        it with its own rows (a captured sample and its capture record land together).

        An image the dataset already holds (same sha256) is returned as it is, not added twice.
        ``InvalidRequest`` when the bytes are not an image this dataset can hold.
        """
        dataset = self.get(dataset_id)
        if dataset.type != CLASSIFICATION:
            raise InvalidRequest(f"dataset {dataset.name} is not an image classification dataset")
        digest = hashlib.sha256(data).hexdigest()
        known = self.session.scalar(
            select(Sample).where(Sample.dataset_id == dataset_id, Sample.digest == digest)
        )
        if known is not None:
            return known, False
        info = probe(data, name, self.ctx.settings.datasets.max_image_pixels)
        sample = Sample(
            dataset_id=dataset_id,
            digest=digest,
            source_name=name[:1000],
            media_type=info.media_type,
            size=len(data),
            width=info.width,
            height=info.height,
        )
        if annotation is not None:
            check_label_name(annotation.label)
            label = next((lb for lb in dataset.labels if lb.name == annotation.label), None)
            if label is None:
                label = Label(name=annotation.label)
                dataset.labels.append(label)
            sample.annotations = [
                Annotation(
                    label=label,
                    source=annotation.source,
                    creator=annotation.creator,
                    confidence=annotation.confidence,
                )
            ]
        self.store.put_bytes(digest, data)
        self.store.finish_uploads()
        self.session.add(sample)
        self.session.flush()
        return sample, True

    def delete_sample(self, dataset_id: str, sample_id: int) -> None:
        sample = self.sample(dataset_id, sample_id)
        digest = sample.digest
        self.session.delete(sample)
        self.session.commit()
        self._drop_unreferenced({digest})

    def set_split(self, dataset_id: str, sample_id: int, split: str | None) -> Sample:
        sample = self.sample(dataset_id, sample_id)
        sample.split = split
        self.session.commit()
        return sample

    # --- annotations -------------------------------------------------------------------------

    def set_annotations(
        self, dataset_id: str, sample_id: int, anns: Sequence[AnnotationIn]
    ) -> Sample:
        """Replace a sample's annotations; all are checked before any is written."""
        dataset = self.get(dataset_id)
        sample = self.sample(dataset_id, sample_id)
        labels = {lb.name: lb for lb in dataset.labels}
        new = []
        for i, a in enumerate(anns):
            where = f"sample {sample_id} annotation {i}"
            if a.label not in labels:
                raise InvalidRequest(f"{where}: label {a.label!r} is not in the label set")
            box = (a.box.x, a.box.y, a.box.w, a.box.h) if a.box else None
            box = check_annotation(dataset, sample.width, sample.height, a.label, box, where)
            x, y, w, h = box or (None, None, None, None)
            new.append(
                Annotation(
                    label=labels[a.label],
                    x=x,
                    y=y,
                    w=w,
                    h=h,
                    source=a.source,
                    creator=a.creator,
                    confidence=a.confidence,
                )
            )
        if dataset.type == CLASSIFICATION:
            names = [a.label for a in anns]
            if len(set(names)) != len(names):
                raise InvalidRequest(f"sample {sample_id}: a label appears twice")
            if not dataset.multi_label and len(names) > 1:
                raise InvalidRequest(
                    f"sample {sample_id}: {dataset.name} is single-label, got {len(names)} labels"
                )
        sample.annotations = new
        self.session.commit()
        return sample

    def bulk_label(self, dataset_id: str, op: BulkLabel) -> int:
        """Apply one classification label operation to many samples in one transaction."""
        dataset = self.get(dataset_id)
        if dataset.type != CLASSIFICATION:
            raise InvalidRequest(
                "bulk labeling applies to classification datasets; use PUT annotations for boxes"
            )
        label: Label | None = None
        if op.op != "clear":
            if op.label is None:
                raise InvalidRequest(f"bulk {op.op}: label is required")
            label = self.label(dataset, op.label)
        ids = sorted(set(op.sample_ids))
        found = set(
            self.session.scalars(select(Sample.id).where(Sample.dataset_id == dataset_id))
        ) & set(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"samples {missing[:10]} not found in dataset {dataset_id}")
        if op.op == "add" and not dataset.multi_label:
            raise InvalidRequest(f"{dataset.name} is single-label: use op 'set'")
        for chunk in _chunks(ids, 500):
            if op.op in ("set", "clear"):
                self.session.execute(delete(Annotation).where(Annotation.sample_id.in_(chunk)))
            elif op.op == "remove" and label is not None:
                self.session.execute(
                    delete(Annotation).where(
                        Annotation.sample_id.in_(chunk), Annotation.label_id == label.id
                    )
                )
            if op.op in ("set", "add") and label is not None:
                have: set[int] = set()
                if op.op == "add":
                    have = set(
                        self.session.scalars(
                            select(Annotation.sample_id).where(
                                Annotation.sample_id.in_(chunk), Annotation.label_id == label.id
                            )
                        )
                    )
                rows = [
                    {
                        "sample_id": sid,
                        "label_id": label.id,
                        "source": op.source,
                        "creator": op.creator,
                        "confidence": op.confidence,
                        "created_at": utcnow(),
                    }
                    for sid in chunk
                    if sid not in have
                ]
                if rows:
                    self.session.execute(Annotation.__table__.insert(), rows)
        self.session.commit()
        self.session.expire_all()
        return len(ids)


def _chunks(ids: list[int], n: int) -> list[list[int]]:
    return [ids[i : i + n] for i in range(0, len(ids), n)]


def check_label_name(name: str) -> None:
    if (
        not name
        or len(name) > 200
        or name != name.strip()
        or any(c in name for c in "/\\\x00\n\r\t")
    ):
        raise InvalidRequest(f"label {name!r}: names are 1-200 characters without / \\ or controls")
