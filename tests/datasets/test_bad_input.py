"""Bad input: refused with a clear error naming the item, nothing half-written, nothing lost."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.datasets.conftest import API, Client, brokerless_app, digit_png, make_settings


def _png(seed: int) -> bytes:
    return digit_png(seed % 10, random.Random(seed))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _post_zip(client: Client, ds: str, data: bytes, fmt: str = "imagefolder") -> Any:
    return client.api.post(
        f"{API}/datasets/{ds}/archive",
        files={"file": ("x.zip", data, "application/zip")},
        data={"format": fmt},
    )


def _state(client: Client, ds: str) -> tuple[int, list[str], int]:
    d = client.api.get(f"{API}/datasets/{ds}").json()
    objects = client.ctx.settings.resolved_dataset_dir / "objects"
    return d["sample_count"], d["labels"], sum(1 for p in objects.rglob("*") if p.is_file())


@pytest.fixture
def seeded(client: Client) -> str:
    """A dataset that already holds two samples, to prove bad imports lose nothing."""
    ds = client.create("bad")
    files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(2)]
    r = client.api.post(f"{API}/datasets/{ds}/files", files=files, data={"label": "keep"})
    assert r.json()["imported"] == 2
    return ds


# Unsafe, forged and oversized zips are refused the same way by every zip endpoint:
# tests/control_plane/test_hostile_zips.py. Here only the dataset's own per-file limit.


def test_member_over_the_file_limit_refuses_the_archive(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, dataset_max_file_bytes=100_000)
    app, ctx = brokerless_app(settings)
    api = TestClient(
        app, headers={"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    )
    ds = api.post(f"{API}/datasets", json={"name": "b", "type": "image_classification"}).json()[
        "id"
    ]
    # Declared (and actually) too large: highly compressible zeros, next to a good sample.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/good.png", _png(1))
        zf.writestr("ok/big.png", b"\0" * 1_000_000)
    r = api.post(f"{API}/datasets/{ds}/archive", files={"file": ("b.zip", buf.getvalue())})
    assert r.status_code == 413 and "big.png" in r.json()["detail"], r.text
    assert r.json()["error"] == "ArchiveTooLarge"
    assert api.get(f"{API}/datasets/{ds}").json()["sample_count"] == 0
    ctx.close()


def test_corrupt_and_non_image_files_reported_per_file(client: Client, seeded: str) -> None:
    good = _png(20)
    truncated = _png(21)[:-30]
    files = [
        ("files", ("good.png", good, "image/png")),
        ("files", ("truncated.png", truncated, "image/png")),
        ("files", ("notes.txt", b"hello", "text/plain")),
        ("files", ("again.png", good, "image/png")),  # duplicate within the upload
        ("files", ("old.png", _png(0), "image/png")),  # duplicate of a stored sample
    ]
    r = client.api.post(f"{API}/datasets/{seeded}/files", files=files)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["imported"] == 1
    errors = {e["item"]: e["reason"] for e in rep["errors"]}
    assert set(errors) == {"truncated.png", "notes.txt"}
    assert "not an image" in errors["notes.txt"]
    dups = {d["item"]: d["sample_id"] for d in rep["duplicates"]}
    assert set(dups) == {"again.png", "old.png"} and dups["old.png"] is not None
    assert _state(client, seeded)[0] == 3


@pytest.mark.parametrize(
    ("name", "content", "fmt", "words"),
    [
        ("annotations.json", b"{not json", "coco", "not valid JSON"),
        (
            "annotations.json",
            json.dumps({"images": [{"id": 1}], "categories": []}).encode(),
            "coco",
            "images.0.file_name",
        ),
        (
            "annotations.json",
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png"}],
                    "categories": [{"id": 1, "name": "c"}],
                    "annotations": [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}],
                }
            ).encode(),
            "coco",
            "unknown category_id 9",
        ),
        (
            "Annotations/a.xml",
            b"<annotation><filename>a.png</filename><object><name>c</name></object></annotation>",
            "voc",
            "missing <name> or <bndbox>",
        ),
        ("Annotations/a.xml", b"<annotation><oops", "voc", "not valid XML"),
        ("Annotations/a.xml", b'<!DOCTYPE x [<!ENTITY a "aaaa">]><annotation/>', "voc", "DTD"),
        (
            "data.manifest",
            b'{"source": "a.png"}\n{"usage": "TRAIN"}\n',
            "manifest",
            "data.manifest line 2: source",
        ),
        ("data.manifest", b'{"source": "../a.png"}\n', "manifest", "'..' in path"),
        ("data.manifest", b'{"source": "a.png", "usage": "LATER"}\n', "manifest", "usage"),
        (
            "data.manifest",
            b'{"source": "a.png", "annotation": [{"type": "x/y"}]}\n',
            "manifest",
            "unknown annotation type",
        ),
    ],
)
def test_malformed_annotation_files(
    client: Client, seeded: str, name: str, content: bytes, fmt: str, words: str
) -> None:
    before = _state(client, seeded)
    r = _post_zip(
        client, seeded, _zip({"a.png": _png(30), "JPEGImages/a.png": _png(31), name: content}), fmt
    )
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"] and name.split("/")[-1] in r.json()["detail"], r.text
    assert _state(client, seeded) == before


def test_labels_not_in_the_set(client: Client, seeded: str) -> None:
    manifest = (
        b'{"source": "a.png", "annotation": [{"type": "modelarts/image_classification", '
        b'"name": "keep"}]}\n'
        b'{"source": "b.png", "annotation": [{"type": "modelarts/image_classification", '
        b'"name": "stranger"}]}\n'
    )
    r = client.api.post(
        f"{API}/datasets/{seeded}/archive",
        files={
            "file": ("m.zip", _zip({"a.png": _png(40), "b.png": _png(41), "m.manifest": manifest}))
        },
        data={"format": "manifest", "add_labels": "false"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 1
    assert "stranger" in r.json()["errors"][0]["reason"]
    assert r.json()["errors"][0]["item"] == "b.png"
    assert _state(client, seeded)[1] == ["keep"]


def test_server_folder_outside_roots(client: Client, seeded: str) -> None:
    r = client.import_folder(seeded, Path("/etc"))
    assert r.status_code == 422 and "not inside an allowed import root" in r.json()["detail"]


def test_single_label_rule(client: Client, seeded: str) -> None:
    sid = client.samples(seeded)[0]["id"]
    client.api.post(f"{API}/datasets/{seeded}/labels", json={"name": "other"})
    r = client.api.put(
        f"{API}/datasets/{seeded}/samples/{sid}/annotations",
        json={"annotations": [{"label": "keep"}, {"label": "other"}]},
    )
    assert r.status_code == 422 and "single-label" in r.json()["detail"]
    r = client.api.put(
        f"{API}/datasets/{seeded}/samples/{sid}/annotations",
        json={"annotations": [{"label": "keep", "box": {"x": 0, "y": 0, "w": 1, "h": 1}}]},
    )
    assert r.status_code == 422 and "has a box" in r.json()["detail"]
