"""A model trained by a plain user script (no helper) registers with what its lineage knows.

Labels come from the dataset version, the parity gate and int8 calibration run on the version's
validation images through the preprocessing the script declared in ``model.json``; without any
preprocessing, calibrated int8 is refused unless asked for, and ``POST /models`` can supply
labels and preprocessing itself.
"""

from __future__ import annotations

from typing import Any

from model_packager.archive import open_package
from tests.training.conftest import Plane

PRE = {"input": "pixels", "color": "L", "resize": [14, 14], "scale": 1 / 255}


def _manifest(plane: Plane, name: str, version: str = "1") -> Any:
    r = plane.api.get(plane.url(f"/models/{name}/versions/{version}/package"))
    assert r.status_code == 200, r.text
    path = plane.tmp / f"{name}-{version}.edgepkg"
    path.write_bytes(r.content)
    return open_package(path).manifest


def _dataset_labels(plane: Plane) -> list[str]:
    r = plane.api.get(plane.url(f"/datasets/{plane.dataset_id}/versions/{plane.version}"))
    assert r.status_code == 200, r.text
    return sorted(r.json()["label_stats"])


def test_plain_script_gets_dataset_labels_and_a_gate_on_validation_images(plane: Plane) -> None:
    job = plane.script_job("plain", "keras_plain.py", hyperparameters={"epochs": 5})
    done = plane.wait_job(job["id"])
    assert done["state"] == "succeeded", done["log_tail"]
    r = plane.api.post(
        plane.url("/models"),
        json={"name": "plain", "job_id": job["id"], "targets": ["onnx-fp32", "tflite-int8"]},
    )
    assert r.status_code == 202, r.text
    mv = plane.wait_model("plain", "1")
    assert mv["state"] == "ready", mv["error"]
    labels = _dataset_labels(plane)
    assert mv["conversion"]["labels"] == labels
    assert mv["conversion"]["labels_from"].startswith("dataset version")
    assert mv["conversion"]["preprocessing"]["resize"] == [14, 14]
    assert "validation images" in mv["conversion"]["parity_samples"]
    report = mv["conversion_report"]
    assert report["generated_samples"] is False
    assert report["samples"] == 64  # the split has 200; the gate takes the first 64
    assert {v["name"]: v["status"] for v in report["variants"]} == {
        "onnx-fp32": "kept",
        "tflite-int8": "kept",
    }
    manifest = _manifest(plane, "plain")
    assert manifest.labels == labels
    assert manifest.preprocessing is not None and manifest.preprocessing["input"] == "pixels"
    assert manifest.provenance.extra["parity_samples_generated"] is False


def test_without_preprocessing_int8_is_refused_and_the_request_can_supply_it(
    plane: Plane,
) -> None:
    job = plane.script_job(
        "bare", "keras_plain.py", hyperparameters={"epochs": 1, "describe": "no"}
    )
    done = plane.wait_job(job["id"])
    assert done["state"] == "succeeded", done["log_tail"]
    body: dict[str, Any] = {"name": "bare", "job_id": job["id"], "targets": ["tflite-int8"]}
    r = plane.api.post(plane.url("/models"), json=body)
    assert r.status_code == 422 and "calibrate_on_generated" in r.json()["detail"], r.text
    r = plane.api.post(
        plane.url("/models"), json={**body, "preprocessing": {"input": "pixels", "colour": "L"}}
    )
    assert r.status_code == 422, r.text  # a misspelt key is refused up front

    given = [f"digit {i}" for i in range(10)]
    r = plane.api.post(
        plane.url("/models"),
        json={**body, "targets": ["onnx-fp32"], "labels": given, "preprocessing": PRE},
    )
    assert r.status_code == 202, r.text
    mv = plane.wait_model("bare", "1")
    assert mv["state"] == "ready", mv["error"]
    assert mv["conversion"]["labels_from"] == "request"
    assert mv["conversion_report"]["generated_samples"] is False
    assert _manifest(plane, "bare").labels == given
