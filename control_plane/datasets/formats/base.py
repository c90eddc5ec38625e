"""What every format shares: the import and export item types, format names and helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.images import IMAGE_SUFFIXES
from control_plane.datasets.sources import Source, check_relative


class ImportFormat(StrEnum):
    imagefolder = "imagefolder"
    coco = "coco"
    voc = "voc"
    yolo = "yolo"
    manifest = "manifest"


class ExportFormat(StrEnum):
    imagefolder = "imagefolder"
    coco = "coco"
    voc = "voc"
    yolo = "yolo"
    manifest = "manifest"


@dataclass
class ItemAnnotation:
    label: str
    box: tuple[float, float, float, float] | None = None
    # YOLO boxes are (cx, cy, w, h) in 0..1 until the image size is known.
    normalized: bool = False
    source: str | None = None
    creator: str | None = None
    confidence: float | None = None


@dataclass
class ImportItem:
    name: str
    annotations: list[ItemAnnotation] = field(default_factory=list)
    split: str | None = None
    error: str | None = None


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _parent(name: str) -> str:
    return PurePosixPath(name).parent.as_posix()


def _split_from_words(text: str) -> str | None:
    words = set(re.split(r"[^a-z]+", text.lower()))
    if words & {"train", "training"}:
        return "train"
    if words & {"val", "valid", "validation", "eval"}:
        return "validation"
    return None


def _pick_files(
    source: Source, annotation_file: str | None, suffixes: tuple[str, ...]
) -> list[str]:
    if annotation_file:
        name = check_relative(annotation_file, "annotation file")
        if not source.exists(name):
            raise InvalidRequest(f"annotation file {annotation_file!r} not found")
        return [name]
    return [n for n in source.names() if n.lower().endswith(suffixes)]


def _validation_error(where: str, exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InvalidRequest(f"{where}: {loc}: {first['msg']}{more}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


def _load_json(source: Source, name: str) -> Any:
    try:
        return json.loads(source.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{name}: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class ExportAnnotation:
    label: str
    box: tuple[float, float, float, float] | None
    source: str
    creator: str
    confidence: float


@dataclass(frozen=True)
class VersionItem:
    """One sample of a published version, as its manifest and files describe it."""

    digest: str
    extension: str
    path: str  # relative to the version folder
    split: str  # train | validation
    width: int
    height: int
    annotations: tuple[ExportAnnotation, ...]


Adder = Callable[[VersionItem, str], None]


def iter_labels(items: Iterable[VersionItem]) -> list[str]:
    return sorted({a.label for it in items for a in it.annotations})
