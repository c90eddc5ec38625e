"""The digits flow: import as ImageFolder, zip and ModelArts manifest; label through the API;
publish with a seeded, stratified split; check the manifest and version folder."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from pathlib import Path

from tests.datasets.conftest import API, Client, zip_folder
from tests.s3 import BOTH_STORES

pytestmark = BOTH_STORES  # also with an S3 store (tests/s3.py)


def _manifest(client: Client, ds: str, version: str) -> list[dict]:
    r = client.api.get(f"{API}/datasets/{ds}/versions/{version}/manifest")
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_imagefolder_import_publish_split(client: Client, digits_dir: Path) -> None:
    ds = client.create("digits")
    r = client.import_folder(ds, digits_dir)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["imported"] == 300 and report["errors"] == [] and report["duplicates"] == []
    assert sorted(report["labels_added"]) == [str(d) for d in range(10)]

    stats = client.api.get(f"{API}/datasets/{ds}/stats").json()
    assert stats["samples"] == 300 and stats["unlabeled"] == 0
    assert {s["name"]: s["samples"] for s in stats["labels"]} == {str(d): 30 for d in range(10)}

    v1 = client.publish(ds, ratio=0.8, seed=7)
    assert v1["name"] == "V001"
    assert (v1["sample_count"], v1["train_count"], v1["validation_count"]) == (300, 240, 60)
    # Stratified: every digit keeps the ratio exactly (30 -> 24 / 6).
    for label, s in v1["label_stats"].items():
        assert (s["train"], s["validation"]) == (24, 6), label

    lines = _manifest(client, ds, "V001")
    assert len(lines) == 300
    usage = Counter(line["usage"] for line in lines)
    assert usage == {"TRAIN": 240, "EVAL": 60}
    folder = Path(v1["data_url"])
    manifest_bytes = (folder / "manifest.jsonl").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == v1["digest"]
    for line in lines[:20]:
        data = (folder / line["source"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == line["sha256"]
        assert line["annotation"][0]["type"] == "modelarts/image_classification"
    assert json.loads((folder / "version.json").read_text())["digest"] == v1["digest"]

    # Same seed, same split; another seed, another split; names never reused.
    v2 = client.publish(ds, ratio=0.8, seed=7)
    assert v2["name"] == "V002" and v2["digest"] == v1["digest"]
    v3 = client.publish(ds, ratio=0.8, seed=8)
    assert v3["digest"] != v1["digest"] and v3["train_count"] == 240
    assert client.api.delete(f"{API}/datasets/{ds}/versions/V003").status_code == 204
    assert client.publish(ds, ratio=0.5, seed=1)["name"] == "V004"


def test_zip_import_labeled_through_the_api(
    client: Client, digits_dir: Path, tmp_path: Path
) -> None:
    """Upload the digits as a flat zip (no labels), then label every sample through the API."""
    flat = tmp_path / "flat"
    flat.mkdir()
    truth = {}
    for p in sorted(digits_dir.rglob("*.png")):
        (flat / p.name).write_bytes(p.read_bytes())
        truth[p.name] = p.parent.name
    ds = client.create("digits-zip", labels=[str(d) for d in range(10)])
    r = client.upload_zip(ds, zip_folder(flat, tmp_path / "flat.zip"))
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 300
    samples = client.samples(ds, unlabeled=True)
    assert len(samples) == 300

    # One bulk call per digit, as a labeling tool would after a selection.
    by_label: dict[str, list[int]] = {}
    for s in samples:
        by_label.setdefault(truth[s["source_name"]], []).append(s["id"])
    for label, ids in by_label.items():
        r = client.api.post(
            f"{API}/datasets/{ds}/annotations/bulk",
            json={"sample_ids": ids, "op": "set", "label": label, "creator": "alice"},
        )
        assert r.status_code == 200 and r.json()["updated"] == len(ids), r.text
    # A model pre-label on one sample, then a person corrects it.
    sid = by_label["3"][0]
    r = client.api.put(
        f"{API}/datasets/{ds}/samples/{sid}/annotations",
        json={
            "annotations": [
                {"label": "8", "source": "model", "creator": "digits-cnn:1", "confidence": 0.55}
            ]
        },
    )
    assert r.status_code == 200, r.text
    ann = r.json()["annotations"][0]
    assert (ann["label"], ann["source"], ann["creator"], ann["confidence"]) == (
        "8",
        "model",
        "digits-cnn:1",
        0.55,
    )
    assert len(client.samples(ds, label="8")) == 31
    r = client.api.put(
        f"{API}/datasets/{ds}/samples/{sid}/annotations",
        json={"annotations": [{"label": "3", "creator": "bob"}]},
    )
    # A person's annotation records the caller (the shared token acts as the bootstrap admin),
    # not the name the body claims.
    assert r.json()["annotations"][0]["creator"] == "admin"
    assert client.samples(ds, unlabeled=True) == []
    page = client.api.get(f"{API}/datasets/{ds}/samples", params={"label": "5", "limit": 7}).json()
    assert page["total"] == 30 and len(page["items"]) == 7
    thumb = client.api.get(page["items"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"

    v = client.publish(ds, ratio=0.7, seed=3)
    assert (v["train_count"], v["validation_count"]) == (210, 90)
    assert all(s["train"] == 21 for s in v["label_stats"].values())


def test_manifest_import_round_trip(client: Client, digits_dir: Path, tmp_path: Path) -> None:
    """Publish from ImageFolder, export the version (its manifest layout), import that zip into a
    new dataset as a ModelArts manifest: same samples, labels and fixed usage."""
    ds = client.create("digits-a")
    assert client.import_folder(ds, digits_dir).status_code == 200
    v1 = client.publish(ds, ratio=0.8, seed=11)
    r = client.api.get(f"{API}/datasets/{ds}/versions/V001/export", params={"format": "manifest"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    exported = tmp_path / "v1.zip"
    exported.write_bytes(r.content)
    names = zipfile.ZipFile(exported).namelist()
    assert "manifest.jsonl" in names and "version.json" in names

    ds2 = client.create("digits-b")
    r = client.upload_zip(ds2, exported, fmt="manifest")
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 300
    stats = client.api.get(f"{API}/datasets/{ds2}/stats").json()
    assert stats["splits"] == {"train": 240, "validation": 60}
    # The fixed usage is kept, so republishing gives the identical manifest.
    v = client.publish(ds2, ratio=0.5, seed=99)
    assert v["digest"] == v1["digest"]

    # Import the same manifest again: every sample is reported as a duplicate.
    r = client.upload_zip(ds2, exported, fmt="manifest")
    assert r.json()["imported"] == 0 and len(r.json()["duplicates"]) == 300
