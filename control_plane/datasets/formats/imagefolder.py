"""ImageFolder: ``<label>/<file>``, optionally under ``train/`` or ``validation/``."""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath

from control_plane.datasets.formats.base import (
    Adder,
    ImportItem,
    ItemAnnotation,
    VersionItem,
)
from control_plane.datasets.sources import Source


def parse_imagefolder(source: Source) -> list[ImportItem]:
    """``<label>/<file>``: the parent folder names the label; files at the root are unlabeled."""
    items = []
    for name in source.names():
        parent = PurePosixPath(name).parent.name
        anns = [ItemAnnotation(parent)] if parent else []
        items.append(ImportItem(name, anns))
    return items


def write_imagefolder(
    zf: zipfile.ZipFile, items: list[VersionItem], labels: list[str], add: Adder
) -> None:
    """``<split>/<label>/<file>``; a multi-label sample appears under each of its labels."""
    for item in items:
        for label in sorted({a.label for a in item.annotations}):
            add(item, f"{item.split}/{label}/{item.digest}{item.extension}")
