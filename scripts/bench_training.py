"""Benchmark: the built-in image classifier on digits through the job runner, next to the same
training run directly in a Python process.

Both sides run the same code (``control_plane.training.algorithms.image_classification``) on the
same published version with the same hyperparameters, each in a fresh Python process (TensorFlow
starts cold in both). Direct: ``python -c 'main([...])'``, wall time from spawn to exit, peak RSS
from ``wait4``. Runner: an in-process control plane (no broker), wall time from ``POST /jobs`` to
the job's final state as the API reports it, peak RSS as the runner recorded it (also ``wait4``).
Overhead = runner / direct - 1; the target is <= 10%. Runs alternate (direct, runner, ...) so drift
on a busy machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from script_support import in_process_control_plane, peak_rss_mb  # noqa: E402

API = "/api/v1"
TOKEN = "bench-training-token-0123456789"


def direct(data_url: str, out: Path, hp: dict[str, Any]) -> tuple[float, float]:
    """The algorithm run straight in a child process: (wall seconds, the child's peak RSS MiB)."""
    args = [f"--data_url={data_url}", f"--train_url={out}"] + [f"--{k}={v}" for k, v in hp.items()]
    code = (
        "import sys; from control_plane.training.algorithms.image_classification import main; "
        f"sys.exit(main({args!r}))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"direct run failed with {proc.returncode}")
    return wall, peak_rss_mb(usage)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from control_plane.core.settings import Settings
    from control_plane.training.runtime import runtime_for
    from tests.datasets.digits import write_digits

    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    write_digits(tmp / "digits", per_class=args.per_class, seed=3)
    settings = Settings(
        api_token=TOKEN,
        mqtt_password="bench-training-mqtt",
        data_dir=tmp / "cp",
        dataset_import_roots=[tmp],
    )
    app, ctx = in_process_control_plane(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    runtime = runtime_for(app)
    try:
        ds = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
        ds_id = ds.json()["id"]
        api.post(f"{API}/datasets/{ds_id}/imports", json={"path": str(tmp / "digits")})
        v = api.post(f"{API}/datasets/{ds_id}/versions", json={"train_ratio": 0.8, "seed": 1})
        version = v.json()
        hp = {"input_size": args.input_size, "epochs": args.epochs, "seed": 0}
        print(
            f"digits: {version['train_count']} train / {version['validation_count']} validation "
            f"images, {args.input_size}x{args.input_size}, {args.epochs} epochs, "
            f"{os.cpu_count()} CPUs"
        )
        rows: list[dict[str, Any]] = []
        job_id = None
        for i in range(args.repeat):
            d_wall, d_rss_mb = direct(version["data_url"], tmp / f"direct-{i}", hp)
            t0 = time.perf_counter()
            if job_id is None:
                r = api.post(
                    f"{API}/training/jobs",
                    json={
                        "name": "bench",
                        "algorithm": "image_classification",
                        "dataset_id": ds_id,
                        "dataset_version": version["name"],
                        "hyperparameters": hp,
                    },
                )
            else:
                r = api.post(f"{API}/training/jobs/{job_id}/versions", json={})
            job_id = r.json()["id"]
            while True:
                job = api.get(f"{API}/training/jobs/{job_id}").json()
                if job["state"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.05)
            r_wall = time.perf_counter() - t0
            if job["state"] != "succeeded":
                raise RuntimeError(f"runner job {job['state']}: {job['failure_reason']}")
            rows.append(
                {
                    "direct_s": d_wall,
                    "runner_s": r_wall,
                    "overhead": r_wall / d_wall - 1,
                    "direct_peak_rss_mb": d_rss_mb,
                    "runner_job_peak_rss_mb": job["peak_rss_bytes"] / 2**20,
                    "accuracy": job["metrics"]["accuracy"],
                }
            )
            row = rows[-1]
            print(
                f"run {i + 1}: direct {row['direct_s']:.1f}s, runner {row['runner_s']:.1f}s "
                f"(overhead {row['overhead']:+.1%}); peak RSS direct "
                f"{row['direct_peak_rss_mb']:.0f} MB, runner job "
                f"{row['runner_job_peak_rss_mb']:.0f} MB; accuracy {row['accuracy']:.3f}"
            )
        cp_rss = peak_rss_mb()
        direct_total = sum(r["direct_s"] for r in rows)
        runner_total = sum(r["runner_s"] for r in rows)
        summary = {
            "runs": rows,
            "overhead": runner_total / direct_total - 1,
            "control_plane_peak_rss_mb": cp_rss,
        }
        print(
            f"overall: runner overhead {summary['overhead']:+.1%} (target <= +10%); "
            f"control plane process peak RSS {cp_rss:.0f} MB (API + runner + dataset import)"
        )
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
    finally:
        runtime.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
