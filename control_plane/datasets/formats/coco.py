"""COCO detection JSON: images, categories, ``[x, y, w, h]`` pixel boxes (our convention)."""

from __future__ import annotations

import json
import zipfile
from pathlib import PurePosixPath

from pydantic import Field, ValidationError

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.formats.base import (
    Adder,
    ImportItem,
    ItemAnnotation,
    VersionItem,
    _load_json,
    _parent,
    _pick_files,
    _split_from_words,
    _Strict,
    _validation_error,
)
from control_plane.datasets.sources import Source, join


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
