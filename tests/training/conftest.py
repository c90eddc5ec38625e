"""Fixtures for training, visualization and the registry: one in-process control plane for the
session (no broker: the app's lifespan is not entered, as in tests/datasets), a published digits
dataset version, and helpers to run jobs to the end.

One app serves every test so the digits version is imported and published once; jobs are
independent rows, so tests do not see each other's state. Its training runtime (runner, TensorBoard
manager, conversions) is stopped at the end, which also ends any job a failed test left behind.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.core.context import AppContext
from control_plane.training.runtime import TrainingRuntime, runtime_for
from tests.datasets.conftest import API, API_TOKEN, brokerless_app, make_settings
from tests.datasets.digits import write_digits

REPO = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "canceled")
SCRIPTS = Path(__file__).parent / "scripts"


@dataclass
class Plane:
    api: TestClient
    ctx: AppContext
    runtime: TrainingRuntime
    tmp: Path
    dataset_id: str
    version: str
    data_url: str

    def url(self, path: str) -> str:
        return f"{API}{path}"

    def upload_code(self, files: dict[str, str]) -> str:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
        r = self.api.post(
            self.url("/training/code"),
            files={"file": ("code.zip", buf.getvalue(), "application/zip")},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["code_id"])

    def script_job(
        self, name: str, script: str, framework: str = "tensorflow", **spec: Any
    ) -> dict[str, Any]:
        code_id = self.upload_code({"train.py": (SCRIPTS / script).read_text()})
        body = {
            "name": name,
            "algorithm": "script",
            "framework": framework,
            "code_id": code_id,
            "boot_file": "train.py",
            "dataset_id": self.dataset_id,
            "dataset_version": self.version,
            **spec,
        }
        r = self.api.post(self.url("/training/jobs"), json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.api.get(self.url(f"/training/jobs/{job_id}"))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_job(self, job_id: str, states: tuple[str, ...] = FINAL, timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")

    def wait_model(self, name: str, version: str, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api.get(self.url(f"/models/{name}/versions/{version}"))
            assert r.status_code == 200, r.text
            if r.json()["state"] != "converting":
                return r.json()
            time.sleep(0.5)
        raise AssertionError(f"model {name} {version} still converting after {timeout}s")


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("training")
    digits = tmp / "digits"
    # 100 per class: enough for the from-scratch CNN to pass 0.95 on the validation split.
    write_digits(digits, per_class=100, seed=3)
    settings = make_settings(
        tmp,
        dev_mode=True,  # the registry generates its signing key
        dataset_import_roots=[tmp],
        training_max_concurrent=3,
    )
    app, ctx = brokerless_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    runtime = runtime_for(app)
    try:
        r = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
        assert r.status_code == 201, r.text
        ds = r.json()["id"]
        r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(digits)})
        assert r.status_code == 200 and r.json()["imported"] == 1000, r.text
        r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.8, "seed": 1})
        assert r.status_code == 201, r.text
        v = r.json()
        yield Plane(api, ctx, runtime, tmp, ds, v["name"], v["data_url"])
    finally:
        runtime.stop()
        ctx.close()


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    """The MXNet environment; created by scripts/setup-mxnet when missing (never skipped)."""
    python = REPO / ".venv-mxnet" / "bin" / "python"
    ok = (
        python.exists()
        and subprocess.run(
            [str(python), "-c", "import mxnet"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not ok:
        t0 = time.monotonic()
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "setup-mxnet")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        sys.stderr.write(f"setup-mxnet took {time.monotonic() - t0:.0f}s\n")
        if proc.returncode != 0:
            pytest.fail(f"scripts/setup-mxnet failed:\n{proc.stdout}\n{proc.stderr}")
    os.environ.setdefault("EDGE_MXNET_PYTHON", str(python))
    return python
