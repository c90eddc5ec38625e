"""Training code and job outputs through the object store: two nodes that share no folder.

Two control planes (in process, no broker) on one database and one S3 bucket (moto on
loopback, ``tests/s3.py``), each with its own data folder, as two replicas on two machines. A
script job is uploaded and run on node A; node B then reads its log and metrics, fetches its
outputs and registers its model (converted and signed on B); node B also runs a job from the
code uploaded through A (it downloads the zip). A damaged object is refused, not used.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.training.runtime import runtime_for
from tests.datasets.conftest import API, API_TOKEN, brokerless_app, make_settings
from tests.s3 import S3Server

SCRIPT = """\
import shutil, sys
from pathlib import Path
import edge_training as et

data_url, train_url, hp = et.parse_args()
print("training on", data_url, flush=True)
out = Path(train_url)
shutil.copyfile(hp["model_src"], out / "model.onnx")
et.log_scalar(train_url, "loss", 0.25, step=1)
et.report_metrics(train_url, {"accuracy": 0.875})
print("done", flush=True)
"""


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


class Node:
    def __init__(self, tmp: Path, name: str, shared: dict[str, Any]) -> None:
        settings = make_settings(tmp, data_dir=tmp / name, dev_mode=True, **shared)
        self.app, self.ctx = brokerless_app(settings)
        self.api = TestClient(self.app, headers={"Authorization": f"Bearer {API_TOKEN}"})
        self.training_dir = settings.resolved_training_dir

    def call(self, method: str, path: str, **kw: Any) -> Any:
        return self.api.request(method, f"{API}{path}", **kw)

    def wait(self, path: str, key: str, done: tuple[str, ...], timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.call("GET", path).json()
            if got[key] in done:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{path} still {got[key]}")


@pytest.fixture
def nodes(tmp_path: Path, s3_server: S3Server) -> Iterator[tuple[Node, Node]]:
    shared = {
        **s3_server.settings(s3_server.new_bucket()),
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
    }
    a = Node(tmp_path, "a", shared)
    b = Node(tmp_path, "b", shared)
    try:
        yield a, b
    finally:
        for node in (a, b):
            if getattr(node.app.state, "training", None) is not None:
                node.app.state.training.stop()
            node.ctx.close()


def _job(node: Node, name: str, code_id: str, data: Path, model: Path) -> str:
    body = {
        "name": name,
        "algorithm": "script",
        "code_id": code_id,
        "boot_file": "train.py",
        "data_path": str(data),
        "hyperparameters": {"model_src": str(model)},
    }
    r = node.call("POST", "/training/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_code_and_outputs_travel_through_the_bucket(
    nodes: tuple[Node, Node], tmp_path: Path, models_dir: Path
) -> None:
    a, b = nodes
    r = a.call("POST", "/training/code", files={"file": ("c.zip", _zip({"train.py": SCRIPT}))})
    assert r.status_code == 201, r.text
    code_id = r.json()["code_id"]
    job_id = _job(a, "bucket-job", code_id, tmp_path, models_dir / "mlp.onnx")
    runtime_for(a.app)  # only A runs jobs for now
    job = a.wait(f"/training/jobs/{job_id}", "state", ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    a.app.state.training.stop()
    assert not (b.training_dir / "jobs" / job_id).exists()  # nothing shared on disk

    # B: the job's log, scalars and model, from the bucket.
    r = b.call("GET", f"/training/jobs/{job_id}/logs")
    assert r.status_code == 200 and "done" in r.text, r.text
    assert (b.training_dir / "jobs" / job_id / "output" / "model.onnx").read_bytes() == (
        models_dir / "mlp.onnx"
    ).read_bytes()
    scalars = b.call("GET", f"/training/jobs/{job_id}/scalars").json()
    assert any("loss" in tags for tags in scalars["runs"].values()), scalars
    assert b.call("GET", f"/training/jobs/{job_id}").json()["metrics"]["accuracy"] == 0.875
    r = b.call("POST", "/models", json={"name": "bucket-mlp", "job_id": job_id})
    assert r.status_code == 202, r.text
    version = r.json()["version"]
    mv = b.wait(f"/models/bucket-mlp/versions/{version}", "state", ("ready", "failed"))
    assert mv["state"] == "ready", mv

    # B runs a job whose code was uploaded through A: the zip comes from the bucket.
    assert not (b.training_dir / "code" / code_id).exists()
    runtime_for(b.app)
    second = _job(b, "bucket-job-b", code_id, tmp_path, models_dir / "mlp.onnx")
    job = b.wait(f"/training/jobs/{second}", "state", ("succeeded", "failed"))
    assert job["state"] == "succeeded" and job["replica"] is None, job
    assert (b.training_dir / "code" / code_id / "train.py").read_text() == SCRIPT


def test_a_damaged_object_is_refused(
    nodes: tuple[Node, Node], tmp_path: Path, s3_server: S3Server
) -> None:
    a, b = nodes
    r = a.call("POST", "/training/code", files={"file": ("c.zip", _zip({"train.py": SCRIPT}))})
    code_id = r.json()["code_id"]
    objects = a.ctx.objects
    objects.put_bytes(f"training/code/{code_id}.zip", _zip({"train.py": "print('evil')"}))
    body = {"name": "damaged", "algorithm": "script", "code_id": code_id, "boot_file": "train.py"}
    r = b.call("POST", "/training/jobs", json={**body, "data_path": str(tmp_path)})
    assert r.status_code == 503 and "sha256" in r.json()["detail"], r.text
    assert not (b.training_dir / "code" / code_id).exists()  # nothing extracted
    assert a.call("GET", "/training/algorithms").status_code == 200  # still serving
