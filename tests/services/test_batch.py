"""Batch services: one agent replica predicts over a published dataset version's split.

One control plane (with its lifespan: embedded broker, fleet channel, supervisor) imports a
small digits image set, publishes a version, imports an image classifier (image preprocessing,
softmax, top-3, digit labels) and runs a batch service over the validation split: one row per
sample, an accuracy equal to the one counted by hand from the rows and the dataset's labels, the
same rows as CSV, the replica stopped once done; bad requests get a 4xx. The service is a use
of its dataset version (which cannot be deleted under it). An uploaded zip of images, ``.npy``
files and a tensor JSONL runs the same way: one row per input, each equal to onnxruntime's
answer over the same pixels; bad uploads are refused whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from control_plane.app import create_app
from control_plane.core.settings import Settings
from control_plane.services.detection import Detected, TrueBox, evaluate_detection
from tests.agent.test_http import POST, PRE, digits_onnx
from tests.datasets.conftest import write_detection
from tests.datasets.digits import digit_png, write_digits
from tests.services.test_online import API, TOKEN, _wait

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def api(tmp: Path) -> Iterator[TestClient]:
    settings = Settings(
        dev_mode=True,
        api_token=TOKEN,
        data_dir=tmp / "cp",
        embedded_broker_port=0,
        service_restart_backoff_max_s=1.0,
        dataset_import_roots=[tmp],
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def dataset(api: TestClient, tmp: Path) -> dict[str, Any]:
    """A published digits version: 4 images per digit, half of them validation."""
    folder = tmp / "digits"
    write_digits(folder, per_class=4, seed=3)
    r = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    body = {"path": str(folder), "format": "imagefolder"}
    r = api.post(f"{API}/datasets/{ds}/imports", json=body)
    assert r.status_code == 200 and r.json()["imported"] == 40, r.text
    r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.5, "seed": 0})
    assert r.status_code == 201, r.text
    r = api.get(f"{API}/datasets/{ds}/versions/V001/manifest")
    manifest = [json.loads(line) for line in r.text.splitlines()]
    return {"id": ds, "version": "V001", "manifest": manifest}


@pytest.fixture(scope="module")
def model(api: TestClient, tmp: Path) -> str:
    """The digits classifier imported with image preprocessing, softmax, top-3 and the dataset's
    labels (only ONNX, to keep the conversion short)."""
    onnx_path = digits_onnx(tmp / "digits.onnx")
    with open(onnx_path, "rb") as f:
        r = api.post(
            f"{API}/models/import",
            files={"file": ("digits.onnx", f, "application/octet-stream")},
            data={
                "name": "digits",
                "labels": json.dumps(LABELS),
                "preprocessing": json.dumps(PRE),
                "postprocessing": json.dumps(POST),
                "targets": json.dumps(["onnx-fp32"]),
            },
        )
    assert r.status_code == 202, r.text
    version = r.json()["version"]
    mv = _wait(
        "conversion",
        lambda: (
            (m := api.get(f"{API}/models/digits/versions/{version}").json())["state"]
            != "converting"
            and m
        ),
    )
    assert mv["state"] == "ready", mv["error"]
    return str(version)


def _batch(dataset: dict[str, Any], model: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "digits-eval",
        "type": "batch",
        "models": [{"model": "digits", "version": model}],
        "input": {
            "dataset_id": dataset["id"],
            "dataset_version": dataset["version"],
            "split": "validation",
        },
        **extra,
    }


def test_bad_requests_are_refused(api: TestClient, dataset: dict[str, Any], model: str) -> None:
    body = _batch(dataset, model)
    r = api.post(f"{API}/services", json={**body, "replicas": 2})
    assert r.status_code == 422 and "replicas" in r.text
    models = [{"model": "digits", "version": model, "max_batch_size": 8}]
    r = api.post(f"{API}/services", json={**body, "models": models})
    assert r.status_code == 422 and "max_batch_size" in r.text
    r = api.post(f"{API}/services", json={**body, "input": None})
    assert r.status_code == 422 and "needs an input" in r.text
    unknown = {**body["input"], "dataset_version": "V042"}
    r = api.post(f"{API}/services", json={**body, "input": unknown})
    assert r.status_code == 422 and "V042" in r.json()["detail"], r.text
    r = api.post(f"{API}/services", json={**body, "type": "online"})
    assert r.status_code == 422 and "batch services" in r.text
    assert api.get(f"{API}/services").json() == []


def test_batch_over_the_validation_split(
    api: TestClient, dataset: dict[str, Any], model: str
) -> None:
    r = api.post(f"{API}/services", json=_batch(dataset, model))
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "deploying" and r.json()["type"] == "batch"

    done = _wait(
        "the batch service to end",
        lambda: (
            (s := api.get(f"{API}/services/digits-eval").json())["state"] in ("succeeded", "failed")
            and s
        ),
    )
    assert done["state"] == "succeeded", done["reason"]
    validation = {m["source"]: m for m in dataset["manifest"] if m["usage"] == "EVAL"}
    assert done["batch"]["total"] == done["batch"]["done"] == len(validation) == 20
    assert done["batch"]["state"] == "SUCCEEDED" and done["batch"]["failed"] == 0

    page = api.get(f"{API}/services/digits-eval/results", params={"limit": 1000}).json()
    rows = page["items"]
    assert page["total"] == len(rows) == 20
    assert sorted(r["source"] for r in rows) == sorted(validation)
    for row in rows:
        assert row["error"] is None
        assert row["label"] == validation[row["source"]]["annotation"][0]["name"]
        assert row["predicted"] in LABELS and len(row["top_k"]) == 3
        assert row["top_k"][0]["label"] == row["predicted"]
    correct = sum(r["label"] == r["predicted"] for r in rows)

    ev = done["evaluation"]
    assert ev["labels"] == LABELS
    assert (ev["total"], ev["correct"], ev["errors"]) == (20, correct, 0)
    assert ev["accuracy"] == pytest.approx(correct / 20)
    assert sum(map(sum, ev["confusion_matrix"])) == 20

    second = api.get(f"{API}/services/digits-eval/results", params={"offset": 5, "limit": 3})
    assert second.json()["items"] == rows[5:8]

    r = api.get(f"{API}/services/digits-eval/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [(t["source"], t["label"], t["predicted"]) for t in table] == [
        (x["source"], x["label"], x["predicted"]) for x in rows
    ]
    r = api.get(f"{API}/services/digits-eval/results.jsonl")
    assert [json.loads(line) for line in r.text.splitlines()] == rows

    # The service uses its dataset version: deleting the version is refused while it exists.
    version_url = f"{API}/datasets/{dataset['id']}/versions/{dataset['version']}"
    uses = api.get(version_url).json()["used_by"]
    assert [(u["kind"], u["ref"]) for u in uses] == [("batch_service", "digits-eval")]
    r = api.delete(version_url)
    assert r.status_code == 409 and "digits-eval" in r.json()["detail"], r.text

    # Done: the replica no longer runs.
    _wait(
        "the replica to stop",
        lambda: api.get(f"{API}/services/digits-eval").json()["replicas"][0]["state"] == "stopped",
    )
    assert api.delete(f"{API}/services/digits-eval").status_code == 204
    assert api.get(f"{API}/services/digits-eval").status_code == 404
    assert api.get(version_url).json()["used_by"] == []


def test_online_services_have_no_results(api: TestClient) -> None:
    assert api.get(f"{API}/services/nothing/results").status_code == 404


# --- uploaded inputs ----------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    """What the package's preprocessing makes of a 28x28 grayscale PNG: [28, 28, 1] / 255."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return (image / np.float32(255))[..., np.newaxis]


def _upload(api: TestClient, name: str, data: bytes) -> Any:
    return api.post(f"{API}/services/inputs", files={"file": (name, data)})


def test_bad_uploads_are_refused_whole(api: TestClient) -> None:
    png = digit_png(1, random.Random(0))
    cases = {
        "inputs.csv": (b"a,b\n", "expected a .zip"),
        "mixed.zip": (_zip({"a.png": png, "notes.txt": b"x"}), "notes.txt"),
        "lines.jsonl": (b'{"inputs": {"image": [1]}}\n\n{"image": [1]}\n', "line 3"),
        "broken.jsonl": (b"{not json\n", "line 1: not JSON"),
        "objects.npy": (_npy(np.array([{"a": 1}], dtype=object)), "objects.npy"),
        "short.npy": (b"\x93NUMPY", "not a readable .npy"),
        "empty.zip": (_zip({}), "no files"),
    }
    for name, (data, message) in cases.items():
        r = _upload(api, name, data)
        assert r.status_code in (413, 422), (name, r.text)
        assert message in r.json()["detail"], (name, r.text)
    assert api.get(f"{API}/services/inputs").json() == []
    r = api.post(
        f"{API}/services", json={"name": "inputs", "models": [{"model": "m", "version": "1"}]}
    )
    assert r.status_code == 422 and "reserved" in r.text


def test_batch_over_an_uploaded_zip(api: TestClient, model: str, tmp: Path) -> None:
    rng = random.Random(7)
    pngs = [digit_png(d, rng) for d in (3, 5, 8)]
    pixels = [_pixels(p) for p in pngs]
    # The same pixels three ways: a PNG, a bare-sample .npy and a line of a tensor JSONL.
    lines = b"".join(
        json.dumps({"inputs": {"image": x.tolist()}}).encode() + b"\n" for x in pixels[:2]
    )
    members = {
        "png/a.png": pngs[0],
        "png/b.png": pngs[1],
        "png/c.png": pngs[2],
        "npy/a.npy": _npy(pixels[0]),
        "npy/c.npy": _npy(pixels[2]),
        "tensors.jsonl": lines.replace(b"\n", b"\n\n", 1),  # a blank line is skipped
    }
    r = _upload(api, "inputs.zip", _zip(members))
    assert r.status_code == 201, r.text
    upload = r.json()
    assert (upload["count"], upload["files"], upload["filename"]) == (7, 6, "inputs.zip")
    again = _upload(api, "same.zip", _zip(members)).json()
    assert again["id"] == upload["id"]  # stored once, by content
    assert [u["id"] for u in api.get(f"{API}/services/inputs").json()] == [upload["id"]]

    body = {
        "name": "uploaded",
        "type": "batch",
        "models": [{"model": "digits", "version": model}],
        "input": {"upload": upload["id"]},
    }
    r = api.post(f"{API}/services", json={**body, "input": {"upload": "0" * 64}})
    assert r.status_code == 422 and "not found" in r.json()["detail"], r.text
    r = api.post(f"{API}/services", json={**body, "input": {**body["input"], "split": "all"}})
    assert r.status_code == 422, r.text
    r = api.post(f"{API}/services", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["input"] == {
        "dataset_id": None,
        "dataset_version": None,
        "split": None,
        "upload": upload["id"],
    }
    done = _wait(
        "the uploaded batch to end",
        lambda: (
            (s := api.get(f"{API}/services/uploaded").json())["state"] in ("succeeded", "failed")
            and s
        ),
    )
    assert done["state"] == "succeeded", done["reason"]
    assert done["evaluation"] is None and done["batch"]["done"] == 7

    rows = api.get(f"{API}/services/uploaded/results").json()["items"]
    assert [r["source"] for r in rows] == [
        "npy/a.npy",
        "npy/c.npy",
        "png/a.png",
        "png/b.png",
        "png/c.png",
        "tensors.jsonl#1",
        "tensors.jsonl#3",
    ]
    # onnxruntime over the same pixels gives every row's answer.
    session = ort.InferenceSession(str(tmp / "digits.onnx"))
    logits = session.run(None, {"image": np.stack(pixels)})[0]
    expected = [str(int(np.argmax(v))) for v in logits]
    by_source = {r["source"]: r for r in rows}
    for source, i in [
        ("npy/a.npy", 0),
        ("npy/c.npy", 2),
        ("png/a.png", 0),
        ("png/b.png", 1),
        ("png/c.png", 2),
        ("tensors.jsonl#1", 0),
        ("tensors.jsonl#3", 1),
    ]:
        row = by_source[source]
        assert row["error"] is None and row["label"] is None, row
        assert row["predicted"] == expected[i], (source, row, expected)
    assert by_source["npy/a.npy"]["score"] == pytest.approx(by_source["png/a.png"]["score"])

    # An upload a service uses cannot be deleted; once the service is gone it can.
    r = api.delete(f"{API}/services/inputs/{upload['id']}")
    assert r.status_code == 409 and "uploaded" in r.json()["detail"]
    assert api.delete(f"{API}/services/uploaded").status_code == 204
    assert api.delete(f"{API}/services/inputs/{upload['id']}").status_code == 204
    assert api.get(f"{API}/services/inputs/{upload['id']}").status_code == 404


# --- detection ----------------------------------------------------------------------------------

#: The fixed answer of the test detector, per image: normalized xyxy boxes, scores, classes.
DET_BOXES = [[0.1, 0.1, 0.4, 0.6], [0.5, 0.3, 0.8, 0.9]]
DET_SCORES = [0.9, 0.4]
DET_CLASSES_OUT = [0, 2]


def _detector_onnx(path: Path) -> Path:
    """image FP32 [N, 32, 32, 3] -> the same two boxes for every image (input summed times 0, so
    the outputs still depend on it): boxes [1, 2, 4], scores [1, 2], classes [1, 2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {
        "c_boxes": np.array([DET_BOXES], np.float32),
        "c_scores": np.array([DET_SCORES], np.float32),
        "c_classes": np.array([DET_CLASSES_OUT], np.float32),
        "zero": np.array(0.0, np.float32),
    }
    nodes = [
        helper.make_node("ReduceSum", ["image"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["z"]),
    ] + [helper.make_node("Add", [f"c_{n}", "z"], [n]) for n in ("boxes", "scores", "classes")]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, 2]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_batch_over_a_detection_version(api: TestClient, tmp: Path) -> None:
    folder = tmp / "det"
    images = write_detection(folder, 8)
    truth = {
        hashlib.sha256((folder / "images" / im.file_name).read_bytes()).hexdigest(): im
        for im in images
    }
    r = api.post(f"{API}/datasets", json={"name": "shapes", "type": "object_detection"})
    ds = r.json()["id"]
    r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(folder), "format": "coco"})
    assert r.status_code == 200 and r.json()["imported"] == 8, r.text
    r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.5, "seed": 0})
    assert r.status_code == 201, r.text

    pre = {"input": "image", "color": "RGB", "resize": [32, 32], "scale": 1 / 255, "dtype": "FP32"}
    with open(_detector_onnx(tmp / "detector.onnx"), "rb") as f:
        r = api.post(
            f"{API}/models/import",
            files={"file": ("detector.onnx", f, "application/octet-stream")},
            data={"name": "detector", "preprocessing": json.dumps(pre)},
        )
    assert r.status_code == 202, r.text
    version = str(r.json()["version"])
    mv = _wait(
        "conversion",
        lambda: (
            (m := api.get(f"{API}/models/detector/versions/{version}").json())["state"]
            != "converting"
            and m
        ),
    )
    assert mv["state"] == "ready", mv["error"]

    body = {
        "name": "shapes-eval",
        "type": "batch",
        "models": [{"model": "detector", "version": version}],
        "input": {"dataset_id": ds, "dataset_version": "V001"},
        "detection": {"score_threshold": 0.3},
    }
    r = api.post(f"{API}/services", json={**body, "type": "online", "input": None})
    assert r.status_code == 422 and "detection is for batch" in r.text
    r = api.post(f"{API}/services", json=body)
    assert r.status_code == 201, r.text
    done = _wait(
        "the detection batch to end",
        lambda: (
            (s := api.get(f"{API}/services/shapes-eval").json())["state"] in ("succeeded", "failed")
            and s
        ),
    )
    assert done["state"] == "succeeded", done["reason"]
    rows = api.get(f"{API}/services/shapes-eval/results").json()["items"]
    assert len(rows) == 4 and done["evaluation"] is None

    # Every image gets the detector's two boxes, scaled to its 96x64 pixels, labelled by the
    # version's sorted labels (bar, circle, square): class 0 -> bar, class 2 -> square.
    expected = [
        {"label": "bar", "score": 0.9, "x": 9.6, "y": 6.4, "w": 28.8, "h": 32.0},
        {"label": "square", "score": 0.4, "x": 48.0, "y": 19.2, "w": 28.8, "h": 38.4},
    ]
    pairs = []
    for row in rows:
        assert row["error"] is None
        assert len(row["detections"]) == 2
        for got, want in zip(row["detections"], expected, strict=True):
            assert got["label"] == want["label"]
            assert [got[k] for k in "xywh"] == pytest.approx([want[k] for k in "xywh"], abs=1e-4)
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        im = truth[Path(row["source"]).stem]
        pairs.append(
            (
                [TrueBox(lbl, x, y, w, h) for lbl, x, y, w, h in im.boxes],
                [
                    Detected(d["label"], d["score"], d["x"], d["y"], d["w"], d["h"])
                    for d in expected
                ],
            )
        )
    # The service's figures are the metrics of its rows against the dataset's own boxes.
    want = evaluate_detection(pairs, ["bar", "circle", "square"])
    ev = done["detection_evaluation"]
    assert (ev["images"], ev["boxes"], ev["detections"]) == (4, want.boxes, 8)
    assert ev["true_positives"] == want.true_positives
    assert ev["mean_ap"] == pytest.approx(want.mean_ap)
    assert [c["ap"] for c in ev["per_class"]] == pytest.approx([c.ap for c in want.per_class])
    table = list(
        csv.DictReader(io.StringIO(api.get(f"{API}/services/shapes-eval/results.csv").text))
    )
    assert json.loads(table[0]["detections"])[0]["label"] == "bar"
    assert api.delete(f"{API}/services/shapes-eval").status_code == 204
