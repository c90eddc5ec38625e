"""Demo step for training: train the built-in CNN on a published digits version, register it,
and fetch the converted, signed package.

``run_training_demo(base_url, token, dataset_id=..., version="V001")`` talks to a running control
plane over HTTP; ``run_training_demo(app=app, dataset_id=..., version=...)`` uses an in-process app
(FastAPI ``TestClient``; its training runtime starts on first use). Steps: queue an
``image_classification`` job, follow its log live, register the succeeded job as model version
(conversion to ONNX + TFLite variants, parity-gated, signed by the control plane's key), download
the package into ``out_dir`` and print the parity table and lineage. Returns
``{"job_id", "model", "version", "package_digest", "package_path", "accuracy", "variants"}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from script_support import API, api_client  # noqa: E402


def run_training_demo(
    base_url: str | None = None,
    token: str | None = None,
    *,
    app: Any = None,
    dataset_id: str,
    version: str = "V001",
    name: str = "digits-cnn",
    epochs: int = 20,
    input_size: int = 28,
    out_dir: Path | None = None,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Train, register, convert and sign; print progress; return the package's path and digest."""
    client, call = api_client(base_url, token, app)

    existing = call("GET", "/training/jobs", params={"name": name})
    hp = {"input_size": input_size, "epochs": epochs}
    if existing:
        job = call(
            "POST", f"/training/jobs/{existing[-1]['id']}/versions", json={"hyperparameters": hp}
        )
    else:
        job = call(
            "POST",
            "/training/jobs",
            json={
                "name": name,
                "algorithm": "image_classification",
                "dataset_id": dataset_id,
                "dataset_version": version,
                "hyperparameters": hp,
            },
        )
    print(f"training job {job['id']} ({name} v{job['version']}) queued")
    with client.stream(
        "GET", f"{API}/training/jobs/{job['id']}/logs", params={"follow": "true"}
    ) as r:
        for line in r.iter_lines():
            if " epoch " in line or "validation accuracy" in line:
                print(f"  | {line.split(' INFO ')[-1]}")
    job = call("GET", f"/training/jobs/{job['id']}")
    if job["state"] != "succeeded":
        raise RuntimeError(f"training {job['state']}: {job['failure_reason']}\n{job['log_tail']}")
    accuracy = job["metrics"]["accuracy"]
    print(f"job succeeded: validation accuracy {accuracy:.4f}")

    mv = call("POST", "/models", json={"name": name, "job_id": job["id"]})
    print(f"registering model {name} version {mv['version']}: converting and signing")
    deadline = time.monotonic() + timeout_s
    while mv["state"] == "converting":
        if time.monotonic() > deadline:
            raise RuntimeError("conversion did not finish in time")
        time.sleep(1)
        mv = call("GET", f"/models/{name}/versions/{mv['version']}")
    if mv["state"] != "ready":
        raise RuntimeError(f"conversion failed: {mv['error']}")
    report = mv["conversion_report"]
    print(report.get("table", ""))

    digest = mv["package_digest"]
    out = Path(out_dir or REPO / ".demo")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{digest}.edgepkg"
    r = client.get(f"{API}/models/{name}/versions/{mv['version']}/package")
    if r.status_code != 200:
        raise RuntimeError(f"package download: {r.status_code} {r.text}")
    path.write_bytes(r.content)
    lineage = call("GET", f"/lineage/{digest}")
    ds = lineage["dataset"] or {}
    print(
        f"package {path} (sha256 {digest[:16]}...) <- model {name}:{mv['version']} <- job "
        f"{job['id']} <- dataset {ds.get('dataset_id')} {ds.get('version')}"
    )
    return {
        "job_id": job["id"],
        "model": name,
        "version": mv["version"],
        "package_digest": digest,
        "package_path": path,
        "accuracy": accuracy,
        "variants": [v["name"] for v in report["variants"] if v["status"] == "kept"],
    }
