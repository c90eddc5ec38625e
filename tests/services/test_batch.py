"""Batch services: one agent replica predicts over a published dataset version's split.

One control plane (with its lifespan: embedded broker, fleet channel, supervisor) imports a
small digits image set, publishes a version, imports an image classifier (image preprocessing,
softmax, top-3, digit labels) and runs a batch service over the validation split: one row per
sample, an accuracy equal to the one counted by hand from the rows and the dataset's labels, the
same rows as CSV, the replica stopped once done; bad requests get a 4xx.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.settings import Settings
from tests.agent.test_http import POST, PRE, digits_onnx
from tests.datasets.digits import write_digits
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

    # Done: the replica no longer runs.
    _wait(
        "the replica to stop",
        lambda: api.get(f"{API}/services/digits-eval").json()["replicas"][0]["state"] == "stopped",
    )
    assert api.delete(f"{API}/services/digits-eval").status_code == 204
    assert api.get(f"{API}/services/digits-eval").status_code == 404


def test_online_services_have_no_results(api: TestClient) -> None:
    assert api.get(f"{API}/services/nothing/results").status_code == 404
