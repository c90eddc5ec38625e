"""The built-in image classifier on the digits version, registered as a signed multi-variant
package; lineage from the package back to the dataset version; registry rules."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from control_plane.deployments.models import Deployment
from model_packager.archive import verify_package
from tests.training.conftest import Plane


@pytest.fixture(scope="module")
def trained(plane: Plane) -> dict[str, Any]:
    r = plane.api.post(
        plane.url("/training/jobs"),
        json={
            "name": "digits-cnn",
            "algorithm": "image_classification",
            "dataset_id": plane.dataset_id,
            "dataset_version": plane.version,
            "hyperparameters": {"input_size": 28, "epochs": 20},
        },
    )
    assert r.status_code == 201, r.text
    job = plane.wait_job(r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["log_tail"]
    return dict(job)


@pytest.fixture(scope="module")
def registered(plane: Plane, trained: dict[str, Any]) -> dict[str, Any]:
    r = plane.api.post(
        plane.url("/models"),
        json={
            "name": "digits",
            "job_id": trained["id"],
            "description": "first",
            "tags": {"a": "1"},
        },
    )
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "converting"
    mv = plane.wait_model("digits", r.json()["version"])
    assert mv["state"] == "ready", mv["error"]
    return dict(mv)


def test_builtin_reaches_accuracy_and_reports_metrics(plane: Plane, trained: dict) -> None:
    m = trained["metrics"]
    assert m["accuracy"] >= 0.95, m
    labels = [str(d) for d in range(10)]
    assert sorted(m["per_class"]) == labels
    assert all({"precision", "recall"} <= set(v) for v in m["per_class"].values())
    cm = m["confusion_matrix"]
    assert cm["labels"] == labels and sum(map(sum, cm["matrix"])) == m["validation_samples"] == 200
    scalars = plane.api.get(plane.url(f"/training/jobs/{trained['id']}/scalars")).json()["runs"]
    assert len(scalars["validation"]["epoch_accuracy"]) == 20
    assert scalars["train"]["epoch_loss"][-1]["value"] < scalars["train"]["epoch_loss"][0]["value"]


def test_registered_package_passes_parity(plane: Plane, registered: dict, trained: dict) -> None:
    report = registered["conversion_report"]
    kept = [v for v in report["variants"] if v["status"] == "kept"]
    assert {"onnx-fp32", "tflite-fp32"} <= {v["name"] for v in kept}
    assert all(v["parity"]["passed"] for v in kept)
    assert report["generated_samples"] is False  # gated on real validation images
    assert registered["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
    assert registered["hyperparameters"] == {"input_size": 28, "epochs": 20}
    assert registered["source_framework"] == "keras"
    assert registered["conversion"]["preprocessing"]["resize"] == [28, 28]

    r = plane.api.get(plane.url("/models/digits/versions/1/package"))
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == registered["package_digest"]
    path = plane.tmp / "digits.edgepkg"
    path.write_bytes(r.content)
    reader, _ = verify_package(path, plane.ctx.trust)
    manifest = reader.manifest
    assert manifest.labels == [str(d) for d in range(10)]
    assert all(v.parity is not None for v in manifest.variants)
    # It is a package like any upload: listed, deployable.
    assert plane.api.get(plane.url(f"/packages/{registered['package_digest']}")).status_code == 200


def test_lineage_from_package_to_dataset_version(plane: Plane, registered: dict) -> None:
    r = plane.api.get(plane.url(f"/lineage/{registered['package_digest']}"))
    assert r.status_code == 200, r.text
    lineage = r.json()
    assert lineage["model"]["name"] == "digits"
    assert lineage["job"]["id"] == registered["job_id"]
    assert lineage["job"]["algorithm"] == "image_classification"
    ds = lineage["dataset"]
    assert (ds["dataset_id"], ds["version"]) == (plane.dataset_id, plane.version)
    assert ds["labels"] == [str(d) for d in range(10)]
    # The dataset version knows what uses it, and refuses deletion.
    v = plane.api.get(plane.url(f"/datasets/{plane.dataset_id}/versions/{plane.version}")).json()
    uses = [{k: u[k] for k in ("kind", "ref")} for u in v["used_by"]]
    assert {"kind": "model", "ref": "digits:1"} in uses  # other tests' models may use it too
    deleted = plane.api.delete(plane.url(f"/datasets/{plane.dataset_id}/versions/{plane.version}"))
    assert deleted.status_code == 409


def test_versions_tags_and_deletion_rules(
    plane: Plane, registered: dict, trained: dict, models_dir: Path
) -> None:
    r = plane.api.patch(
        plane.url("/models/digits/versions/1"), json={"description": "best", "tags": {"b": "2"}}
    )
    assert r.status_code == 200 and r.json()["tags"] == {"b": "2"}
    # A job with a model descending from it cannot be deleted.
    assert plane.api.delete(plane.url(f"/training/jobs/{trained['id']}")).status_code == 409
    # Version 2 imported from an ONNX upload (no TensorFlow in that conversion: quick).
    with open(models_dir / "mlp.onnx", "rb") as f:
        r = plane.api.post(
            plane.url("/models/import"),
            files={"file": ("mlp.onnx", f, "application/octet-stream")},
            data={"name": "digits", "description": "imported", "tags": '{"src": "upload"}'},
        )
    assert r.status_code == 202, r.text
    assert (r.json()["version"], r.json()["origin"], r.json()["source_kind"]) == (
        "2",
        "import",
        "onnx",
    )
    v2 = plane.wait_model("digits", "2")
    assert v2["state"] == "ready", v2["error"]
    assert v2["job_id"] is None and v2["tags"] == {"src": "upload"}
    models = plane.api.get(plane.url("/models")).json()
    assert {"name": "digits", "versions": ["1", "2"], "latest": "2"} in models

    # Deletion is refused while a deployment names the package.
    with plane.ctx.sessions() as session:
        session.add(
            Deployment(id="dep-1", package_digest=v2["package_digest"], target={"device_id": "x"})
        )
        session.commit()
    r = plane.api.delete(plane.url("/models/digits/versions/2"))
    assert r.status_code == 409 and "dep-1" in r.json()["detail"]
    with plane.ctx.sessions() as session:
        session.delete(session.get(Deployment, "dep-1"))
        session.commit()
    assert plane.api.delete(plane.url("/models/digits/versions/2")).status_code == 204
    assert plane.api.get(plane.url("/models/digits/versions/2")).status_code == 404
    assert plane.api.get(plane.url(f"/packages/{v2['package_digest']}")).status_code == 404


def test_import_tflite(plane: Plane, models_dir: Path) -> None:
    with open(models_dir / "mlp.tflite", "rb") as f:
        r = plane.api.post(
            plane.url("/models/import"),
            files={"file": ("mlp.tflite", f, "application/octet-stream")},
            data={"name": "mlp-lite"},
        )
    assert r.status_code == 202, r.text
    mv = plane.wait_model("mlp-lite", "1")
    assert mv["state"] == "ready", mv["error"]
    assert mv["source_framework"] == "tflite"
    bad = plane.api.post(
        plane.url("/models/import"),
        files={"file": ("notes.txt", b"hello", "text/plain")},
        data={"name": "bad"},
    )
    assert bad.status_code == 422


def test_register_refuses_unfinished_jobs(plane: Plane) -> None:
    job = plane.script_job("failing-register", "failing.py", hyperparameters={"lr": 1})
    plane.wait_job(job["id"])
    r = plane.api.post(plane.url("/models"), json={"name": "nope", "job_id": job["id"]})
    assert r.status_code == 422 and "failed" in r.json()["detail"]
