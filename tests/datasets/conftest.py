"""Fixtures for the dataset API: an in-process control plane without any broker, and generated
image sets.

The app's lifespan starts the fleet channel (and an embedded broker); datasets need neither, so
the fixture builds the ``AppContext`` itself, applies the migrations and hands it to the app
without entering the lifespan (a ``TestClient`` used outside ``with`` never runs it).

scikit-learn is not installed here, so the "digits" set is drawn: 28x28 grayscale PNGs of the ten
digits, each with its own jitter, stroke width and noise so that no two images are identical.
"""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from tests.datasets.digits import digit_png, write_digits

__all__ = ["digit_png", "write_digits"]

API_TOKEN = "datasets-test-token-0123456789"
API = "/api/v1"


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return out


# --- detection set ---------------------------------------------------------------------------

DET_CLASSES = ["circle", "square", "bar"]


@dataclass(frozen=True)
class DetImage:
    file_name: str
    width: int
    height: int
    boxes: list[tuple[str, int, int, int, int]]  # label, x, y, w, h


def write_detection(folder: Path, n: int, seed: int = 1) -> list[DetImage]:
    """``images/*.png`` with 1-3 shapes each, plus ``annotations.json`` (COCO) and a VOC tree."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out: list[DetImage] = []
    for i in range(n):
        w, h = 96, 64
        im = Image.new("RGB", (w, h), (rng.randint(0, 60), rng.randint(0, 60), 40))
        draw = ImageDraw.Draw(im)
        boxes = []
        for _ in range(rng.randint(1, 3)):
            label = rng.choice(DET_CLASSES)
            bw, bh = rng.randint(8, 30), rng.randint(8, 30)
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            shape = [(x, y), (x + bw - 1, y + bh - 1)]
            color = (255, rng.randint(0, 255), 0)
            if label == "circle":
                draw.ellipse(shape, fill=color)
            else:
                draw.rectangle(shape, fill=color)
            boxes.append((label, x, y, bw, bh))
        name = f"img{i:03d}.png"
        im.save(folder / "images" / name)
        out.append(DetImage(name, w, h, boxes))
    write_coco(folder / "annotations.json", out, prefix="images/")
    return out


def write_coco(path: Path, images: list[DetImage], prefix: str = "") -> None:
    cats = {c: i + 1 for i, c in enumerate(DET_CLASSES)}
    doc: dict[str, Any] = {
        "images": [
            {
                "id": i + 1,
                "file_name": prefix + im.file_name,
                "width": im.width,
                "height": im.height,
            }
            for i, im in enumerate(images)
        ],
        "annotations": [],
        "categories": [{"id": v, "name": k} for k, v in cats.items()],
    }
    for i, im in enumerate(images):
        for label, x, y, w, h in im.boxes:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": cats[label],
                    "bbox": [x, y, w, h],
                }
            )
    path.write_text(json.dumps(doc))


def write_voc(folder: Path, images: list[DetImage], source: Path) -> None:
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for im in images:
        (folder / "JPEGImages" / im.file_name).write_bytes((source / im.file_name).read_bytes())
        objs = "".join(
            f"<object><name>{lb}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
            f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
            for lb, x, y, w, h in im.boxes
        )
        xml = (
            f"<annotation><filename>{im.file_name}</filename><size><width>{im.width}</width>"
            f"<height>{im.height}</height></size>{objs}</annotation>"
        )
        (folder / "Annotations" / f"{Path(im.file_name).stem}.xml").write_text(xml)


# --- the app ---------------------------------------------------------------------------------


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_token": API_TOKEN,
        "mqtt_password": "datasets-test-mqtt-password",
        "data_dir": tmp / "cp",
        "dataset_import_roots": [tmp],
    }
    values.update(overrides)
    return Settings(**values)


def brokerless_app(settings: Settings) -> tuple[FastAPI, AppContext]:
    """The control plane app with its context, without the lifespan (no fleet, no broker)."""
    app = create_app(settings)
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    app.state.ctx = ctx
    return app, ctx


@dataclass
class Client:
    api: TestClient
    ctx: AppContext
    tmp: Path

    def create(self, name: str = "ds", type: str = "image_classification", **kw: Any) -> str:
        r = self.api.post(f"{API}/datasets", json={"name": name, "type": type, **kw})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def import_folder(self, ds: str, path: Path, fmt: str = "imagefolder", **kw: Any) -> Any:
        return self.api.post(
            f"{API}/datasets/{ds}/imports", json={"path": str(path), "format": fmt, **kw}
        )

    def upload_zip(self, ds: str, path: Path, fmt: str = "imagefolder", **form: Any) -> Any:
        with open(path, "rb") as f:
            return self.api.post(
                f"{API}/datasets/{ds}/archive",
                files={"file": (path.name, f, "application/zip")},
                data={"format": fmt, **form},
            )

    def samples(self, ds: str, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            r = self.api.get(
                f"{API}/datasets/{ds}/samples", params={"offset": offset, "limit": 1000, **params}
            )
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["items"]
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                return out

    def publish(self, ds: str, ratio: float = 0.8, seed: int = 0) -> dict[str, Any]:
        r = self.api.post(
            f"{API}/datasets/{ds}/versions", json={"train_ratio": ratio, "seed": seed}
        )
        assert r.status_code == 201, r.text
        return dict(r.json())


@pytest.fixture
def client(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str | None,
    blob_storage: dict[str, Any],
) -> Iterator[Client]:
    roots = [tmp_path_factory.getbasetemp()]
    settings = make_settings(
        tmp_path, dataset_import_roots=roots, database_url=database_url, **blob_storage
    )
    app, ctx = brokerless_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    try:
        yield Client(api, ctx, tmp_path)
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 digits per class (300 PNGs) in ImageFolder layout."""
    folder = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(folder, per_class=30)
    return folder
