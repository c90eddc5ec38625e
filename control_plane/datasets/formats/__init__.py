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

One module per format (``imagefolder``, ``coco``, ``voc``, ``yolo``, ``manifest``), each with its
parser and, where the format can be exported, its writer; ``base`` holds the types they share.
Adding a format: a module here, a member of ``ImportFormat``/``ExportFormat``, a line in
``parse`` and ``WRITERS``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable

from control_plane.datasets.formats.base import (
    Adder,
    ExportAnnotation,
    ExportFormat,
    ImportFormat,
    ImportItem,
    ItemAnnotation,
    VersionItem,
    iter_labels,
)
from control_plane.datasets.formats.coco import parse_coco, write_coco
from control_plane.datasets.formats.imagefolder import parse_imagefolder, write_imagefolder
from control_plane.datasets.formats.manifest import (
    CLASSIFICATION,
    DETECTION,
    SPLIT_TO_USAGE,
    USAGE_TO_SPLIT,
    annotated_by,
    manifest_line,
    parse_manifest,
)
from control_plane.datasets.formats.voc import parse_voc, parse_voc_xml, voc_xml, write_voc
from control_plane.datasets.formats.yolo import parse_yolo, write_yolo
from control_plane.datasets.sources import Source

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "SPLIT_TO_USAGE",
    "USAGE_TO_SPLIT",
    "WRITERS",
    "Adder",
    "ExportAnnotation",
    "ExportFormat",
    "ImportFormat",
    "ImportItem",
    "ItemAnnotation",
    "VersionItem",
    "annotated_by",
    "iter_labels",
    "manifest_line",
    "parse",
    "parse_voc_xml",
    "voc_xml",
]


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


WRITERS: dict[ExportFormat, Callable[[zipfile.ZipFile, list[VersionItem], list[str], Adder], None]]

WRITERS = {
    ExportFormat.imagefolder: write_imagefolder,
    ExportFormat.coco: write_coco,
    ExportFormat.voc: write_voc,
    ExportFormat.yolo: write_yolo,
}
