"""Pascal VOC: one XML per image, ``xmin..xmax`` boxes mapped to ``x = xmin, w = xmax - xmin``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from pathlib import PurePosixPath

from control_plane.core.errors import InvalidRequest
from control_plane.datasets.formats.base import (
    Adder,
    ImportItem,
    ItemAnnotation,
    VersionItem,
    _pick_files,
)
from control_plane.datasets.sources import Source, join


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
