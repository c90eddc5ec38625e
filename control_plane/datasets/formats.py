"""Import parsers and export writers for the dataset formats people already have.

Parsers turn a ``Source`` into ``ImportItem``s (a file name plus its annotations); they never read
image bytes and never touch the database. A structurally broken annotation file (malformed COCO
JSON, VOC XML, manifest line) raises ``InvalidRequest`` naming the file and the place, so the whole
import is refused before anything is written. Problems that concern one sample (its file missing,
a YOLO line that does not parse) become that item's ``error`` and the rest still imports.

Writers take the items of a published version and write one format into a zip.

Box convention everywhere inside the control plane: pixels, ``(x, y, w, h)`` with ``(x, y)`` the
top-left corner (COCO's). VOC's ``xmin..xmax`` map to ``x = xmin, w = xmax - xmin``; YOLO's
normalised centres are converted once the image size is known.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.images import IMAGE_SUFFIXES
from control_plane.datasets.sources import Source, check_relative, join


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


# --- helpers ---------------------------------------------------------------------------------


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


# --- ImageFolder -----------------------------------------------------------------------------


def parse_imagefolder(source: Source) -> list[ImportItem]:
    """``<label>/<file>``: the parent folder names the label; files at the root are unlabeled."""
    items = []
    for name in source.names():
        parent = PurePosixPath(name).parent.name
        anns = [ItemAnnotation(parent)] if parent else []
        items.append(ImportItem(name, anns))
    return items


# --- COCO ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


class _CocoImage(_Strict):
    id: int
    file_name: str = Field(min_length=1)
    width: int | None = None
    height: int | None = None


class _CocoCategory(_Strict):
    id: int
    name: str = Field(min_length=1)


class _CocoAnnotation(_Strict):
    image_id: int
    category_id: int
    bbox: list[float] = Field(min_length=4, max_length=4)
    score: float | None = None


class _Coco(_Strict):
    images: list[_CocoImage]
    annotations: list[_CocoAnnotation] = Field(default_factory=list)
    categories: list[_CocoCategory]


def _load_json(source: Source, name: str) -> Any:
    try:
        return json.loads(source.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{name}: not valid JSON ({exc})") from None


def parse_coco(source: Source, annotation_file: str | None = None) -> list[ImportItem]:
    """One or more COCO ``instances`` JSON files; image paths resolve against the JSON's folder
    (or its ``images/`` subfolder). A file named like ``*train*`` / ``*val*`` fixes the split."""
    files = _pick_files(source, annotation_file, (".json",))
    if not files:
        raise InvalidRequest("COCO import: no .json annotation file found")
    items: list[ImportItem] = []
    for jf in files:
        try:
            coco = _Coco.model_validate(_load_json(source, jf))
        except ValidationError as exc:
            raise _validation_error(jf, exc) from None
        cats = {c.id: c.name for c in coco.categories}
        if len(cats) != len(coco.categories):
            raise InvalidRequest(f"{jf}: duplicate category ids")
        base = _parent(jf)
        split = _split_from_words(PurePosixPath(jf).stem)
        by_id: dict[int, ImportItem] = {}
        for i, img in enumerate(coco.images):
            if img.id in by_id:
                raise InvalidRequest(f"{jf}: images[{i}]: duplicate image id {img.id}")
            name = join(base, img.file_name, f"{jf}: images[{i}].file_name")
            if not source.exists(name):
                alt = join(base, f"images/{img.file_name}", f"{jf}: images[{i}].file_name")
                name = alt if source.exists(alt) else name
            item = ImportItem(name, split=split)
            if not source.exists(name):
                item.error = f"{jf}: image {img.file_name!r} not found"
            by_id[img.id] = item
            items.append(item)
        for i, ann in enumerate(coco.annotations):
            if ann.image_id not in by_id:
                raise InvalidRequest(f"{jf}: annotations[{i}]: unknown image_id {ann.image_id}")
            if ann.category_id not in cats:
                raise InvalidRequest(
                    f"{jf}: annotations[{i}]: unknown category_id {ann.category_id}"
                )
            x, y, w, h = ann.bbox
            by_id[ann.image_id].annotations.append(
                ItemAnnotation(cats[ann.category_id], (x, y, w, h), confidence=ann.score)
            )
    return items


def write_coco(
    zf: zipfile.ZipFile, items: list[VersionItem], labels: list[str], add: Adder
) -> None:
    cat_ids = {name: i + 1 for i, name in enumerate(labels)}
    categories = [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()]
    for split in ("train", "validation"):
        images, anns = [], []
        for item in (it for it in items if it.split == split):
            image_id = len(images) + 1
            fname = f"{item.digest}{item.extension}"
            add(item, f"images/{fname}")
            images.append(
                {"id": image_id, "file_name": fname, "width": item.width, "height": item.height}
            )
            for a in item.annotations:
                if a.box is None:
                    continue
                x, y, w, h = a.box
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": cat_ids[a.label],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": anns, "categories": categories}
        zf.writestr(f"{split}.json", json.dumps(doc, indent=1), zipfile.ZIP_DEFLATED)


# --- Pascal VOC ------------------------------------------------------------------------------


def parse_voc_xml(data: bytes, where: str) -> tuple[str, list[ItemAnnotation]]:
    """(filename, boxes) of one VOC annotation. DTDs are refused: no entity expansion attacks."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise InvalidRequest(f"{where}: DTDs and entities are not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise InvalidRequest(f"{where}: not valid XML ({exc})") from None
    if root.tag != "annotation":
        raise InvalidRequest(f"{where}: root element is <{root.tag}>, expected <annotation>")
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise InvalidRequest(f"{where}: missing <filename>")
    anns = []
    for i, obj in enumerate(root.findall("object")):
        label = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not label or box is None:
            raise InvalidRequest(f"{where}: object {i}: missing <name> or <bndbox>")
        try:
            x1, y1, x2, y2 = (
                float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise InvalidRequest(
                f"{where}: object {i}: bndbox needs numeric xmin/ymin/xmax/ymax"
            ) from None
        anns.append(ItemAnnotation(label, (x1, y1, x2 - x1, y2 - y1)))
    return filename, anns


def parse_voc(source: Source, annotation_file: str | None = None) -> list[ImportItem]:
    """``Annotations/*.xml`` with images in ``JPEGImages/`` (or beside the XML); the split comes
    from ``ImageSets/Main/train.txt`` / ``val.txt`` when present."""
    files = _pick_files(source, annotation_file, (".xml",))
    if not files:
        raise InvalidRequest("VOC import: no .xml annotation file found")
    splits: dict[str, str] = {}
    for n in source.names():
        p = PurePosixPath(n)
        if p.parent.name == "Main" and p.parent.parent.name == "ImageSets" and p.suffix == ".txt":
            split = {"train": "train", "val": "validation"}.get(p.stem)
            if split:
                for line in source.read(n).decode("utf-8", "replace").split():
                    splits[line.strip()] = split
    items = []
    for xf in files:
        filename, anns = parse_voc_xml(source.read(xf), xf)
        xml_dir = PurePosixPath(xf).parent
        candidates = [
            join((xml_dir.parent / "JPEGImages").as_posix(), filename, f"{xf}: <filename>"),
            join(xml_dir.as_posix(), filename, f"{xf}: <filename>"),
        ]
        name = next((c for c in candidates if source.exists(c)), candidates[0])
        item = ImportItem(name, anns, split=splits.get(PurePosixPath(filename).stem))
        if not source.exists(name):
            item.error = f"{xf}: image {filename!r} not found"
        items.append(item)
    return items


def voc_xml(item: VersionItem, filename: str) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(item.width)
    ET.SubElement(size, "height").text = str(item.height)
    ET.SubElement(size, "depth").text = "3"
    for a in item.annotations:
        if a.box is None:
            continue
        x, y, w, h = a.box
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = a.label
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(bb, k).text = _num(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_voc(zf: zipfile.ZipFile, items: list[VersionItem], labels: list[str], add: Adder) -> None:
    sets: dict[str, list[str]] = {"train": [], "validation": []}
    for item in items:
        fname = f"{item.digest}{item.extension}"
        add(item, f"JPEGImages/{fname}")
        zf.writestr(f"Annotations/{item.digest}.xml", voc_xml(item, fname), zipfile.ZIP_DEFLATED)
        sets[item.split].append(item.digest)
    zf.writestr("ImageSets/Main/train.txt", "".join(f"{d}\n" for d in sets["train"]))
    zf.writestr("ImageSets/Main/val.txt", "".join(f"{d}\n" for d in sets["validation"]))
    zf.writestr("labels.txt", "".join(f"{n}\n" for n in labels))


# --- YOLO ------------------------------------------------------------------------------------


def parse_yolo(source: Source) -> list[ImportItem]:
    """``classes.txt`` (or ``obj.names``) + images, each with a ``.txt`` of ``class cx cy w h``
    lines (normalised) either beside it or at the same path under ``labels/`` instead of
    ``images/``. A ``train`` / ``val`` folder in the image's path fixes the split."""
    names = source.names()
    class_file = next(
        (n for n in names if PurePosixPath(n).name in ("classes.txt", "obj.names")), None
    )
    if class_file is None:
        raise InvalidRequest("YOLO import: classes.txt (or obj.names) not found")
    classes = [c.strip() for c in source.read(class_file).decode("utf-8", "replace").splitlines()]
    classes = [c for c in classes if c]
    if not classes:
        raise InvalidRequest(f"{class_file}: no class names")
    items = []
    for name in names:
        if not _is_image(name):
            continue
        p = PurePosixPath(name)
        parts = list(p.with_suffix(".txt").parts)
        candidates = [p.with_suffix(".txt").as_posix()]
        if "images" in parts:
            i = len(parts) - 1 - parts[::-1].index("images")
            parts[i] = "labels"
            candidates.insert(0, PurePosixPath(*parts).as_posix())
        item = ImportItem(name, split=_split_from_words(p.parent.as_posix()))
        label_file = next((c for c in candidates if source.exists(c)), None)
        if label_file is not None:
            text = source.read(label_file).decode("utf-8", "replace")
            for ln, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split()
                try:
                    if len(fields) != 5:
                        raise ValueError
                    cls = int(fields[0])
                    cx, cy, w, h = (float(f) for f in fields[1:])
                except ValueError:
                    item.error = f"{label_file} line {ln}: expected 'class cx cy w h'"
                    break
                if not 0 <= cls < len(classes):
                    item.error = f"{label_file} line {ln}: class {cls} not in {class_file}"
                    break
                item.annotations.append(ItemAnnotation(classes[cls], (cx, cy, w, h), True))
        items.append(item)
    return items


def write_yolo(
    zf: zipfile.ZipFile, items: list[VersionItem], labels: list[str], add: Adder
) -> None:
    index = {n: i for i, n in enumerate(labels)}
    zf.writestr("classes.txt", "".join(f"{n}\n" for n in labels))
    for item in items:
        folder = "train" if item.split == "train" else "val"
        add(item, f"images/{folder}/{item.digest}{item.extension}")
        lines = []
        for a in item.annotations:
            if a.box is None:
                continue
            x, y, w, h = a.box
            cx, cy = (x + w / 2) / item.width, (y + h / 2) / item.height
            lines.append(
                f"{index[a.label]} {cx:.6f} {cy:.6f} {w / item.width:.6f} {h / item.height:.6f}\n"
            )
        zf.writestr(f"labels/{folder}/{item.digest}.txt", "".join(lines))


# --- ModelArts manifest ----------------------------------------------------------------------

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


def parse(
    source: Source, fmt: ImportFormat, annotation_file: str | None = None
) -> list[ImportItem]:
    if fmt is ImportFormat.imagefolder:
        return parse_imagefolder(source)
    if fmt is ImportFormat.coco:
        return parse_coco(source, annotation_file)
    if fmt is ImportFormat.voc:
        return parse_voc(source, annotation_file)
    if fmt is ImportFormat.yolo:
        return parse_yolo(source)
    return parse_manifest(source, annotation_file)


# --- export ----------------------------------------------------------------------------------


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


def write_imagefolder(
    zf: zipfile.ZipFile, items: list[VersionItem], labels: list[str], add: Adder
) -> None:
    """``<split>/<label>/<file>``; a multi-label sample appears under each of its labels."""
    for item in items:
        for label in sorted({a.label for a in item.annotations}):
            add(item, f"{item.split}/{label}/{item.digest}{item.extension}")


WRITERS: dict[ExportFormat, Callable[[zipfile.ZipFile, list[VersionItem], list[str], Adder], None]]
WRITERS = {
    ExportFormat.imagefolder: write_imagefolder,
    ExportFormat.coco: write_coco,
    ExportFormat.voc: write_voc,
    ExportFormat.yolo: write_yolo,
}


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


def iter_labels(items: Iterable[VersionItem]) -> list[str]:
    return sorted({a.label for it in items for a in it.annotations})
