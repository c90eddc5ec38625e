"""Request and response bodies of the dataset and dataset version API (XCreate / XPublic)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.schemas import Name, OrmModel
from control_plane.datasets.formats import ExportFormat, ImportFormat

__all__ = ["ExportFormat", "ImportFormat"]


class DatasetType(StrEnum):
    image_classification = "image_classification"
    object_detection = "object_detection"


class Split(StrEnum):
    train = "train"
    validation = "validation"


# --- datasets and labels ---------------------------------------------------------------------


class DatasetCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="Unique dataset name.")
    type: DatasetType
    multi_label: bool = Field(
        False, description="Classification only: a sample may carry several labels."
    )
    description: str = Field("", max_length=10_000)
    labels: list[str] = Field(
        default_factory=list, max_length=10_000, description="The initial label set."
    )


class DatasetPublic(BaseModel):
    id: str
    name: str
    type: DatasetType
    multi_label: bool
    description: str
    created_at: dt.datetime
    labels: list[str]
    sample_count: int


class LabelCreate(BaseModel):
    name: str = Name


class LabelUpdate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="The new name (rename).")


class LabelMerge(BaseModel):
    into: str = Field(min_length=1, max_length=200, description="Label that absorbs this one.")


class LabelStat(BaseModel):
    name: str
    samples: int = Field(description="Samples carrying the label at least once.")
    annotations: int


class DatasetStats(BaseModel):
    samples: int
    labeled: int
    unlabeled: int
    splits: dict[str, int] = Field(description="Samples with a fixed split, and 'unassigned'.")
    labels: list[LabelStat]


# --- samples and annotations -----------------------------------------------------------------


class Box(BaseModel):
    """Pixels; (x, y) is the top-left corner."""

    model_config = ConfigDict(allow_inf_nan=False)

    x: float = Field(ge=0)
    y: float = Field(ge=0)
    w: float = Field(gt=0)
    h: float = Field(gt=0)


class AnnotationIn(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    label: str = Field(min_length=1, max_length=200)
    box: Box | None = Field(None, description="Required for object detection, absent otherwise.")
    source: Literal["person", "model"] = Field("person", description="Who made the annotation.")
    creator: str = Field(
        "",
        max_length=200,
        description="The model version of a model pre-label. For a `person` annotation the "
        "API records the signed-in user instead of this value.",
    )
    confidence: float = Field(1.0, ge=0, le=1)


class AnnotationPublic(BaseModel):
    id: int
    label: str
    box: Box | None
    source: str
    creator: str
    confidence: float
    created_at: dt.datetime


class AnnotationsSet(BaseModel):
    annotations: list[AnnotationIn] = Field(
        max_length=10_000, description="Replaces every annotation of the sample."
    )


class SamplePublic(BaseModel):
    id: int
    digest: str
    source_name: str
    media_type: str
    size: int
    width: int
    height: int
    split: Split | None
    created_at: dt.datetime
    annotations: list[AnnotationPublic]
    content_url: str
    thumbnail_url: str


class SamplePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[SamplePublic]


class BulkLabel(BaseModel):
    """One labeling operation applied to many samples (classification datasets)."""

    model_config = ConfigDict(allow_inf_nan=False)

    sample_ids: list[Annotated[int, Field(ge=1, le=2**53)]] = Field(
        min_length=1, max_length=100_000
    )
    op: Literal["set", "add", "remove", "clear"] = Field(
        description="set: make `label` the only label; add / remove `label`; clear: all labels."
    )
    label: str | None = Field(None, min_length=1, max_length=200)
    source: Literal["person", "model"] = "person"
    creator: str = Field(
        "", max_length=200, description="As in an annotation: the caller for `person`."
    )
    confidence: float = Field(1.0, ge=0, le=1)


class BulkResult(BaseModel):
    updated: int


class SampleSplit(BaseModel):
    split: Split | None = Field(description="Fix the sample's split, or null to draw it.")


# --- imports ---------------------------------------------------------------------------------


class FolderImport(BaseModel):
    path: str = Field(
        min_length=1, max_length=4096, description="Server folder inside an import root."
    )
    format: ImportFormat = ImportFormat.imagefolder
    annotation_file: str | None = Field(
        None, max_length=4096, description="The COCO JSON / manifest to read, when several exist."
    )
    add_labels: bool = Field(
        True, description="Add labels missing from the label set; false: such items are errors."
    )
    annotated_by: str = Field("import", max_length=200, description="Creator of the labels.")


class ItemError(BaseModel):
    item: str
    reason: str


class DuplicateItem(BaseModel):
    item: str
    sample_id: int | None = Field(description="The sample holding the same content.")


class ImportReport(BaseModel):
    imported: int
    duplicates: list[DuplicateItem]
    errors: list[ItemError]
    labels_added: list[str]


# --- versions --------------------------------------------------------------------------------


class VersionCreate(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    train_ratio: float = Field(0.8, ge=0, le=1, description="Share of samples for training.")
    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="Seed of the split: same seed, same split."
    )
    description: str = Field("", max_length=10_000)


class VersionUse(OrmModel):
    kind: str = Field(description="training_job | model | batch_service | notebook")
    ref: str
    created_at: dt.datetime


class VersionPublic(BaseModel):
    name: str
    dataset_id: str
    description: str
    train_ratio: float
    seed: int
    sample_count: int
    train_count: int
    validation_count: int
    label_stats: dict[str, Any]
    digest: str = Field(description="sha256 of manifest.jsonl (which names each file's sha256).")
    created_at: dt.datetime
    data_url: str = Field(description="The version folder; training jobs get it as --data_url.")
    used_by: list[VersionUse]
