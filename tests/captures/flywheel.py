"""What the flywheel tests share: a small digits CNN trained on style A (``digit_png``, bright
strokes on black) and registered through the API, and waits on the API's states. Style B, the
same digits inverted, is ``tests/datasets/digits.py``'s ``inverted_digits``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tests.control_plane.conftest import Keys
from tests.datasets.digits import write_digits
from tests.fleet.conftest import Fleet

API = "/api/v1"


def wait_state(
    fleet: Fleet, path: str, good: tuple[str, ...], bad: tuple[str, ...], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = fleet.api.get(f"{API}{path}").json()
        if body["state"] in good:
            return dict(body)
        assert body["state"] not in bad, body
        time.sleep(0.3)
    raise AssertionError(f"{path} still {body.get('state')}: {body}")


def train_digits_model(fleet: Fleet, keys: Keys, folder: Path, per_class: int, epochs: int) -> str:
    """Dataset ``digits`` (style A) V001, the built-in CNN on it, registered as model ``digits``
    version 1 with its ONNX variant, signed with the key the test devices trust; the job id."""
    key = fleet.ctx.settings.data_dir / "keys" / "signing.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys.private, key)
    write_digits(folder, per_class=per_class, seed=5)
    fleet.ctx.settings.datasets.import_roots.append(folder)
    api = fleet.api
    ds = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
    assert ds.status_code == 201, ds.text
    r = api.post(f"{API}/datasets/{ds.json()['id']}/imports", json={"path": str(folder)})
    assert r.status_code == 200, r.text
    r = api.post(f"{API}/datasets/{ds.json()['id']}/versions", json={"train_ratio": 0.8, "seed": 1})
    assert r.status_code == 201, r.text
    job = {
        "name": "digits-cnn",
        "algorithm": "image_classification",
        "dataset_id": ds.json()["id"],
        "dataset_version": "V001",
        "hyperparameters": {"input_size": 28, "epochs": epochs},
    }
    r = api.post(f"{API}/training/jobs", json=job)
    assert r.status_code == 201, r.text
    job_id = str(r.json()["id"])
    wait_state(fleet, f"/training/jobs/{job_id}", ("succeeded",), ("failed", "canceled"))
    r = api.post(
        f"{API}/models", json={"name": "digits", "job_id": job_id, "targets": ["onnx-fp32"]}
    )
    assert r.status_code == 202, r.text
    wait_state(fleet, "/models/digits/versions/1", ("ready",), ("failed",))
    return job_id
