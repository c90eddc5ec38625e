"""Demo step for training: train the built-in CNN on a published digits version, register it,
and fetch the converted, signed package.

``run_training_demo(base_url, token, dataset_id=..., version="V001")`` talks to a running control
plane over HTTP; ``run_training_demo(app=app, dataset_id=..., version=...)`` uses an in-process app
(FastAPI ``TestClient``; its training runtime starts on first use); both through the Python SDK.
Steps: queue an ``image_classification`` job, follow its log live, register the succeeded job as
model version (conversion to ONNX + TFLite variants, parity-gated, signed by the control plane's
key), download the package into ``out_dir`` and print the parity table and lineage. Returns
``{"job_id", "model", "version", "package_digest", "package_path", "accuracy", "variants"}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from demo_datasets import sdk_client  # noqa: E402

from edge_inference_sdk import WaitTimeout  # noqa: E402


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
    client = sdk_client(base_url, token, app)

    existing = client.training.jobs(name=name)
    hp = {"input_size": input_size, "epochs": epochs}
    if existing:
        job = client.training.rerun(existing[-1].id, hyperparameters=hp)
    else:
        job = client.training.create_job(
            name,
            "image_classification",
            dataset_id=dataset_id,
            dataset_version=version,
            hyperparameters=hp,
        )
    print(f"training job {job.id} ({name} v{job.version}) queued")
    for line in client.training.logs(job.id, follow=True):
        if " epoch " in line or "validation accuracy" in line:
            print(f"  | {line.split(' INFO ')[-1]}")
    job = client.training.job(job.id)
    if job.state != "succeeded":
        raise RuntimeError(f"training {job.state}: {job.failure_reason}\n{job.log_tail}")
    accuracy = (job.metrics or {})["accuracy"]
    print(f"job succeeded: validation accuracy {accuracy:.4f}")

    mv = client.models.register(name, job.id)
    print(f"registering model {name} version {mv.version}: converting and signing")
    try:
        mv = client.models.wait(name, mv.version, timeout=timeout_s, raise_on_failure=False)
    except WaitTimeout:
        raise RuntimeError("conversion did not finish in time") from None
    if mv.state != "ready":
        raise RuntimeError(f"conversion failed: {mv.error}")
    report = mv.conversion_report or {}
    print(report.get("table", ""))

    digest = mv.package_digest or ""
    out = Path(out_dir or REPO / ".demo")
    out.mkdir(parents=True, exist_ok=True)
    path = client.models.download(name, mv.version, out / f"{digest}.edgepkg")
    lineage = client.models.lineage(digest)
    ds = lineage.dataset or {}
    print(
        f"package {path} (sha256 {digest[:16]}...) <- model {name}:{mv.version} <- job "
        f"{job.id} <- dataset {ds.get('dataset_id')} {ds.get('version')}"
    )
    client.close()
    return {
        "job_id": job.id,
        "model": name,
        "version": mv.version,
        "package_digest": digest,
        "package_path": path,
        "accuracy": accuracy,
        "variants": [v["name"] for v in report["variants"] if v["status"] == "kept"],
    }
