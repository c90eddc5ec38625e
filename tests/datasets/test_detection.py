"""Object detection: COCO and VOC import/export round trips, YOLO import, boxes through the API."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.datasets.conftest import API, Client, DetImage, write_detection, write_voc
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py); S3: test_digits, test_s3_versions


def _boxes_by_digest(client: Client, ds: str) -> dict[str, list[tuple]]:
    out = {}
    for s in client.samples(ds):
        out[s["digest"]] = sorted(
            (a["label"], a["box"]["x"], a["box"]["y"], a["box"]["w"], a["box"]["h"])
            for a in s["annotations"]
        )
    return out


@pytest.fixture
def det(tmp_path: Path) -> tuple[Path, list[DetImage]]:
    folder = tmp_path / "det"
    return folder, write_detection(folder, 24)


def _export(client: Client, ds: str, fmt: str, tmp_path: Path) -> Path:
    r = client.api.get(f"{API}/datasets/{ds}/versions/V001/export", params={"format": fmt})
    assert r.status_code == 200, r.text
    path = tmp_path / f"{ds}-{fmt}.zip"
    path.write_bytes(r.content)
    return path


def test_coco_and_voc_round_trips(
    client: Client, det: tuple[Path, list[DetImage]], tmp_path: Path
) -> None:
    folder, images = det
    ds = client.create("det", type="object_detection")
    r = client.import_folder(ds, folder, "coco")
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 24 and r.json()["errors"] == []
    original = _boxes_by_digest(client, ds)
    assert sum(len(b) for b in original.values()) == sum(len(im.boxes) for im in images)
    v = client.publish(ds, ratio=0.75, seed=5)
    assert (v["train_count"], v["validation_count"]) == (18, 6)
    # Detection versions keep boxes in VOC files named by the manifest's annotation-loc.
    line = json.loads(Path(v["data_url"], "manifest.jsonl").read_text().splitlines()[0])
    assert line["annotation"][0]["annotation-loc"].startswith("Annotations/")

    for fmt in ("coco", "voc", "yolo"):
        archive = _export(client, ds, fmt, tmp_path)
        ds2 = client.create(f"det-{fmt}", type="object_detection")
        r = client.upload_zip(ds2, archive, fmt=fmt)
        assert r.status_code == 200, (fmt, r.text)
        assert r.json()["imported"] == 24, (fmt, r.json())
        again = _boxes_by_digest(client, ds2)
        if fmt == "yolo":  # normalised to 6 decimals: equal within a thousandth of a pixel
            for d, boxes in original.items():
                for a, b in zip(boxes, again[d], strict=True):
                    assert a[0] == b[0] and all(
                        abs(x - y) < 1e-3 for x, y in zip(a[1:], b[1:], strict=True)
                    )
        else:
            assert again == original, fmt
        # The split travels with the export (train/val files, ImageSets, folders).
        stats = client.api.get(f"{API}/datasets/{ds2}/stats").json()
        assert stats["splits"] == {"train": 18, "validation": 6}, fmt


def test_voc_folder_import(
    client: Client, det: tuple[Path, list[DetImage]], tmp_path: Path
) -> None:
    folder, images = det
    voc = tmp_path / "voc"
    write_voc(voc, images, folder / "images")
    ds = client.create("voc", type="object_detection")
    r = client.import_folder(ds, voc, "voc")
    assert r.status_code == 200 and r.json()["imported"] == 24, r.text
    labels = client.api.get(f"{API}/datasets/{ds}").json()["labels"]
    assert set(labels) <= {"circle", "square", "bar"}


def test_boxes_through_the_api(client: Client, det: tuple[Path, list[DetImage]]) -> None:
    folder, _ = det
    ds = client.create("boxes", type="object_detection", labels=["car", "person"])
    files = [
        ("files", (p.name, p.read_bytes(), "image/png"))
        for p in sorted(folder.glob("images/*"))[:3]
    ]
    r = client.api.post(f"{API}/datasets/{ds}/files", files=files)
    assert r.status_code == 200 and r.json()["imported"] == 3, r.text
    sid = client.samples(ds)[0]["id"]
    url = f"{API}/datasets/{ds}/samples/{sid}/annotations"
    good = {
        "label": "car",
        "box": {"x": 1, "y": 2, "w": 30, "h": 20},
        "source": "model",
        "creator": "detector:4",
        "confidence": 0.9,
    }
    r = client.api.put(url, json={"annotations": [good, {**good, "label": "person"}]})
    assert r.status_code == 200 and len(r.json()["annotations"]) == 2
    # Out of bounds (image is 96x64), missing box, unknown label: refused, nothing changed.
    for bad, words in (
        ({**good, "box": {"x": 80, "y": 2, "w": 30, "h": 20}}, "outside the 96x64 image"),
        ({**good, "box": None}, "needs a box"),
        ({**good, "label": "truck"}, "not in the label set"),
    ):
        r = client.api.put(url, json={"annotations": [good, bad]})
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert len(client.api.get(f"{API}/datasets/{ds}/samples/{sid}").json()["annotations"]) == 2
    # Imagefolder export makes no sense for boxes.
    client.publish(ds)
    r = client.api.get(
        f"{API}/datasets/{ds}/versions/V001/export", params={"format": "imagefolder"}
    )
    assert r.status_code == 422


def test_yolo_zip_with_bad_items(
    client: Client, det: tuple[Path, list[DetImage]], tmp_path: Path
) -> None:
    folder, images = det
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("classes.txt", "circle\nsquare\nbar\n")
        for im in images[:5]:
            zf.write(folder / "images" / im.file_name, f"images/{im.file_name}")
            lines = [
                f"{['circle', 'square', 'bar'].index(lb)} {(x + w / 2) / im.width} "
                f"{(y + h / 2) / im.height} {w / im.width} {h / im.height}"
                for lb, x, y, w, h in im.boxes
            ]
            zf.writestr(f"labels/{Path(im.file_name).stem}.txt", "\n".join(lines))
        zf.write(folder / "images" / images[5].file_name, "images/bad-class.png")
        zf.writestr("labels/bad-class.txt", "7 0.5 0.5 0.1 0.1\n")
        zf.write(folder / "images" / images[6].file_name, "images/out.png")
        zf.writestr("labels/out.txt", "0 0.95 0.5 0.5 0.1\n")
        zf.writestr("images/junk.png", b"not a png at all")
    path = tmp_path / "yolo.zip"
    path.write_bytes(buf.getvalue())
    ds = client.create("yolo", type="object_detection")
    r = client.upload_zip(ds, path, fmt="yolo")
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["imported"] == 5
    errors = {e["item"]: e["reason"] for e in rep["errors"]}
    assert "class 7" in errors["images/bad-class.png"]
    assert "outside" in errors["images/out.png"]
    assert "not an image" in errors["images/junk.png"]
    shutil.rmtree(folder)
