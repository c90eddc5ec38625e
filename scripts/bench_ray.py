"""Training on Ray against local worker processes: what the Ray executor adds to a job's time.

Starts its own Ray head on loopback (``ray start --head --block``, 2 CPUs, in a temp folder, its
own process group, stopped at the end), then, each round, runs the same jobs through an
in-process control plane (no broker) with ``training_executor=local`` and with ``ray``, one after
the other:

- ``noop``: a script that reports one metric and exits: the executor's own overhead (claim,
  actor creation and placement, start, polling, release);
- ``tabular``: the built-in tabular classifier (Keras) on a generated 3-class table, 30 epochs:
  a small real job, where the overhead is a share of the work.

Each figure is the median wall time from ``POST /training/jobs`` to the job's final state, and its
ratio to the local executor measured in the same run. Load averages are printed before and after:
on a shared 2-core machine they explain most of the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from script_support import free_port, in_process_control_plane  # noqa: E402

API = "/api/v1"
TOKEN = "bench-token-0123456789abcdef"
NOOP = """import edge_training as et
data_url, train_url, hp = et.parse_args()
et.report_metrics(train_url, {"accuracy": 1.0})
"""
KINDS = ("noop", "tabular")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def start_ray_head(temp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError("ray start exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, f"127.0.0.1:{port}"
        if time.monotonic() > deadline:
            raise RuntimeError("the Ray head never listened")
        time.sleep(0.3)


def stop_ray_head(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def write_table(folder: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["a,b,c,d,label"]
    for i in range(300):
        cls = i % 3
        values = rng.normal(loc=2.5 * cls, scale=0.6, size=4)
        rows.append(",".join(f"{v:.3f}" for v in values) + f",c{cls}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.csv").write_text("\n".join(rows) + "\n")


def run_executor(
    work: Path, table: Path, rounds: int, overrides: dict[str, Any], tag: str
) -> dict[str, list[float]]:
    """Run ``rounds`` jobs of each kind through one control plane; seconds per job, by kind."""
    from fastapi.testclient import TestClient

    from control_plane.core.settings import Settings
    from control_plane.training.runtime import runtime_for

    settings = Settings(
        api_token=TOKEN,
        mqtt_password="bench-mqtt-password-123",
        data_dir=work / tag,
        dataset_import_roots=[table.parent],
        **overrides,
    )
    app, ctx = in_process_control_plane(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    runtime = runtime_for(app)
    runtime.runner.tick_s = 0.1
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("noop.py", NOOP)
        r = api.post(
            f"{API}/training/code", files={"file": ("c.zip", buf.getvalue(), "application/zip")}
        )
        code_id = r.json()["code_id"]
        bodies = {
            "noop": {
                "algorithm": "script",
                "code_id": code_id,
                "boot_file": "noop.py",
                "data_path": str(table),
            },
            "tabular": {
                "algorithm": "tabular_classification",
                "data_path": str(table),
                "hyperparameters": {"epochs": 30},
            },
        }
        for i in range(rounds):
            for kind in KINDS:
                t = time.perf_counter()
                r = api.post(
                    f"{API}/training/jobs", json={"name": f"{tag}-{kind}-{i}", **bodies[kind]}
                )
                if r.status_code != 201:
                    raise RuntimeError(r.text)
                job_id = r.json()["id"]
                while True:
                    job = api.get(f"{API}/training/jobs/{job_id}").json()
                    if job["state"] in ("succeeded", "failed", "canceled"):
                        break
                    time.sleep(0.05)
                if job["state"] != "succeeded":
                    raise RuntimeError(f"{tag} {kind}: {job['state']}: {job['failure_reason']}")
                times[kind].append(time.perf_counter() - t)
    finally:
        runtime.stop()
        ctx.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="jobs of each kind per executor")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {_load()} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        table = work / "data" / "table"
        write_table(table)
        ray_temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths
        head, address = start_ray_head(ray_temp)
        try:
            local = run_executor(work, table, args.rounds, {}, "local")
            on_ray = run_executor(
                work,
                table,
                args.rounds,
                {"training_executor": "ray", "training_ray_address": address},
                "ray",
            )
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            stop_ray_head(head)
            subprocess.run(["rm", "-rf", ray_temp], check=False)
    print(f"load average after: {_load()}")
    print(f"{'job':<10}{'local s':>10}{'ray s':>10}{'ray/local':>11}")
    figures: dict[str, Any] = {}
    for kind in KINDS:
        a, b = statistics.median(local[kind]), statistics.median(on_ray[kind])
        figures[kind] = {"local_s": a, "ray_s": b, "ratio": b / a}
        print(f"{kind:<10}{a:>10.2f}{b:>10.2f}{b / a:>10.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
