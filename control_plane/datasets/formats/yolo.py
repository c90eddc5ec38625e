"""YOLO: one ``.txt`` per image of ``class cx cy w h`` normalised lines, plus a class list."""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.formats.base import (
    Adder,
    ImportItem,
    ItemAnnotation,
    VersionItem,
    _is_image,
    _split_from_words,
)
from control_plane.datasets.sources import Source


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
