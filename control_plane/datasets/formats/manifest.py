"""ModelArts manifest: JSON lines naming each source file, its usage (split) and annotations."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.formats.base import (
    ExportAnnotation,
    ImportItem,
    ItemAnnotation,
    VersionItem,
    _parent,
    _pick_files,
    _Strict,
    _validation_error,
)
from control_plane.datasets.formats.voc import parse_voc_xml
from control_plane.datasets.sources import Source, join

USAGE_TO_SPLIT = {
    "TRAIN": "train",
    "EVAL": "validation",
    "VALIDATION": "validation",
    "": None,
    "INFERENCE": None,
}

SPLIT_TO_USAGE = {"train": "TRAIN", "validation": "EVAL"}

CLASSIFICATION = "modelarts/image_classification"

DETECTION = "modelarts/object_detection"


class _ManifestAnnotation(_Strict):
    type: str
    name: str | None = None
    annotation_loc: str | None = Field(None, alias="annotation-loc")
    annotation_format: str | None = Field(None, alias="annotation-format")
    confidence: float | None = None
    annotated_by: str | None = Field(None, alias="annotated-by")


class _ManifestLine(_Strict):
    source: str = Field(min_length=1)
    usage: str = ""
    annotation: list[_ManifestAnnotation] = Field(default_factory=list)


def annotated_by(value: str | None) -> tuple[str | None, str | None]:
    """(source, creator) from ModelArts' ``annotated-by``: ``model:<version>`` is a model."""
    if value is None:
        return None, None
    if value.startswith("model:"):
        return "model", value.removeprefix("model:")
    return "person", value


def parse_manifest(source: Source, annotation_file: str | None = None) -> list[ImportItem]:
    """JSON Lines, one sample per line: ``source`` (relative to the manifest), ``usage``
    (TRAIN / EVAL), ``annotation[]`` of ``modelarts/image_classification`` (``name``) or
    ``modelarts/object_detection`` (``annotation-loc`` = a Pascal VOC XML)."""
    files = _pick_files(source, annotation_file, (".manifest", ".jsonl"))
    if len(files) != 1:
        raise InvalidRequest(
            f"manifest import: expected one *.manifest or *.jsonl file, found {len(files)}"
            + ("" if not files else f" ({', '.join(files[:5])}); name one as annotation_file")
        )
    mf = files[0]
    base = _parent(mf)
    try:
        text = source.read(mf).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{mf}: not UTF-8 text") from None
    items = []
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{mf} line {ln}"
        try:
            entry = _ManifestLine.model_validate_json(line)
        except ValidationError as exc:
            raise _validation_error(where, exc) from None
        usage = entry.usage.upper()
        if usage not in USAGE_TO_SPLIT:
            raise InvalidRequest(f"{where}: usage {entry.usage!r} is not TRAIN or EVAL")
        if "://" in entry.source:
            raise InvalidRequest(f"{where}: source {entry.source!r}: only relative paths")
        name = join(base, entry.source, f"{where}: source")
        item = ImportItem(name, split=USAGE_TO_SPLIT[usage])
        for a in entry.annotation:
            src, creator = annotated_by(a.annotated_by)
            if a.type == CLASSIFICATION:
                if not a.name:
                    raise InvalidRequest(f"{where}: classification annotation without name")
                item.annotations.append(
                    ItemAnnotation(a.name, None, False, src, creator, a.confidence)
                )
            elif a.type == DETECTION:
                if not a.annotation_loc:
                    raise InvalidRequest(f"{where}: detection annotation without annotation-loc")
                loc = join(base, a.annotation_loc, f"{where}: annotation-loc")
                if not source.exists(loc):
                    raise InvalidRequest(f"{where}: annotation-loc {a.annotation_loc!r} not found")
                _, boxes = parse_voc_xml(source.read(loc), loc)
                for b in boxes:
                    b.source, b.creator, b.confidence = src, creator, a.confidence
                item.annotations.extend(boxes)
            else:
                raise InvalidRequest(f"{where}: unknown annotation type {a.type!r}")
        if not source.exists(name):
            item.error = f"{where}: source {entry.source!r} not found"
        items.append(item)
    return items


def manifest_line(item: VersionItem, detection: bool) -> dict[str, Any]:
    """One ModelArts manifest line. Detection boxes go to a VOC XML named by ``annotation-loc``."""
    anns: list[dict[str, Any]] = []
    if detection:
        if item.annotations:
            a0 = item.annotations[0]
            anns.append(
                {
                    "type": DETECTION,
                    "annotation-loc": f"Annotations/{item.digest}.xml",
                    "annotation-format": "PASCAL VOC",
                    "annotated-by": _by(a0),
                    "confidence": min(a.confidence for a in item.annotations),
                }
            )
    else:
        for a in item.annotations:
            anns.append(
                {
                    "type": CLASSIFICATION,
                    "name": a.label,
                    "annotated-by": _by(a),
                    "confidence": a.confidence,
                }
            )
    return {
        "id": item.digest,
        "source": item.path,
        "usage": SPLIT_TO_USAGE[item.split],
        "sha256": item.digest,
        "width": item.width,
        "height": item.height,
        "annotation": anns,
    }


def _by(a: ExportAnnotation) -> str:
    return f"model:{a.creator}" if a.source == "model" else a.creator or "human"
