"""Dashboard benchmark: a page against the REST call that reads the same data, same run.

- the sample grid: ``GET /ui/datasets/{id}/samples?limit=100&offset=k`` (signed-in session) against
  ``GET /api/v1/datasets/{id}/samples?limit=100&offset=k`` (bearer token), 10,000 samples present
  (imported through the API as small PNGs, a tenth of them labelled);
- the job page: ``GET /ui/training/{job}`` against ``GET /api/v1/training/jobs/{job}/scalars``
  for a job with 5,000 scalar points (two runs x two tags, written with ``edge_training``).
  The job row is seeded straight into the database as a finished job: running a training job
  that logs 5,000 points is not what is measured.

Both run in one in-process control plane (no broker), through Starlette's test client, so the
figures are server-side time plus the same in-process transport for both. Requests alternate
page / REST so a change in machine load hits both alike; the table shows p50 and p99 of each
and the page/REST ratio (target <= 1.5), with the load average before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from script_support import in_process_control_plane  # noqa: E402

API = "/api/v1"
TOKEN = "bench-token-0123456789abcdef"
ADMIN_PASSWORD = "bench-admin-password"


def _png(i: int) -> bytes:
    from PIL import Image

    im = Image.new("L", (8, 8), i % 251)
    im.putpixel((i % 8, (i // 8) % 8), 255 - i % 200)
    im.putpixel(((i // 64) % 8, (i // 512) % 8), (i * 7) % 256)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seed_samples(api: Any, count: int) -> str:
    r = api.post(
        f"{API}/datasets",
        json={"name": "bench", "type": "image_classification", "labels": ["a", "b"]},
    )
    ds = str(r.json()["id"])
    for start in range(0, count, 1000):
        files = [
            ("files", (f"{i}.png", _png(i), "image/png"))
            for i in range(start, min(count, start + 1000))
        ]
        r = api.post(f"{API}/datasets/{ds}/files", files=files)
        assert r.status_code == 200, r.text
    ids = [
        s["id"]
        for s in api.get(f"{API}/datasets/{ds}/samples", params={"limit": 1000}).json()["items"]
    ]
    api.post(
        f"{API}/datasets/{ds}/annotations/bulk", json={"sample_ids": ids, "op": "set", "label": "a"}
    )
    return ds


def seed_job(ctx: Any, points: int) -> str:
    from control_plane.training.models import TrainingJob
    from control_plane.training.sdk import edge_training

    job_id = uuid.uuid4().hex[:16]
    with ctx.sessions() as session:
        session.add(
            TrainingJob(
                id=job_id,
                name="bench",
                version=1,
                algorithm="image_classification",
                framework="tensorflow",
                hyperparameters={"epochs": points // 4},
                timeout_s=3600,
                state="succeeded",
                log_tail="",
            )
        )
        session.commit()
    out = ctx.settings.resolved_training_dir / "jobs" / job_id / "output"
    per_series = points // 4
    for run in ("train", "validation"):
        for step in range(per_series):
            edge_training.log_scalar(str(out), "loss", 1.0 / (step + 1), step, run=run)
            edge_training.log_scalar(str(out), "accuracy", 1 - 1.0 / (step + 2), step, run=run)
    (out.parent / "job.log").write_text("".join(f"epoch {i}\n" for i in range(200)))
    return job_id


def measure(client_a: Any, url_a: Any, client_b: Any, url_b: Any, rounds: int) -> dict[str, Any]:
    """``rounds`` of each, alternating, after a few unmeasured warm-up requests (the first
    scalars read imports TensorFlow through tensorboard's reader)."""
    for i in range(3):
        client_a.get(url_a(i))
        client_b.get(url_b(i))
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        for client, url, out in ((client_a, url_a(i), a), (client_b, url_b(i), b)):
            t = time.perf_counter()
            r = client.get(url)
            out.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (url, r.status_code, r.text[:200])
    return {
        "page_p50_ms": statistics.median(a),
        "page_p99_ms": _pct(a, 0.99),
        "rest_p50_ms": statistics.median(b),
        "rest_p99_ms": _pct(b, 0.99),
        "ratio_p50": statistics.median(a) / statistics.median(b),
        "ratio_p99": _pct(a, 0.99) / _pct(b, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000, help="samples in the dataset")
    parser.add_argument("--points", type=int, default=5_000, help="scalar points of the job")
    parser.add_argument("--rounds", type=int, default=200, help="requests of each kind")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from fastapi.testclient import TestClient

    from control_plane.core.settings import Settings
    from control_plane.users.service import start_users

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard's reader imports TensorFlow
    from control_plane.training.runtime import runtime_for

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-", ignore_cleanup_errors=True) as tmp:
        settings = Settings(
            api_token=TOKEN,
            mqtt_password="bench-mqtt-password-123",
            admin_password=ADMIN_PASSWORD,
            data_dir=Path(tmp) / "data",
        )
        app, ctx = in_process_control_plane(settings)
        start_users(ctx)
        rest = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
        t0 = time.perf_counter()
        ds = seed_samples(rest, args.count)
        job = seed_job(ctx, args.points)
        print(
            f"seeded {args.count} samples and {args.points} scalar points "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        browser = TestClient(app)
        browser.get("/ui/login")
        r = browser.post(
            "/ui/login",
            data={
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "login_token": browser.cookies.get("cp_login"),
            },
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        pages = max(1, args.count // 100)
        load_before = _load()
        grid = measure(
            browser,
            lambda i: f"/ui/datasets/{ds}/samples?limit=100&offset={(i * 37 % pages) * 100}",
            rest,
            lambda i: f"{API}/datasets/{ds}/samples?limit=100&offset={(i * 37 % pages) * 100}",
            args.rounds,
        )
        job_page = measure(
            browser,
            lambda i: f"/ui/training/{job}",
            rest,
            lambda i: f"{API}/training/jobs/{job}/scalars",
            args.rounds,
        )
        load_after = _load()
        runtime_for(app).stop()  # started by the scalars route
        ctx.close()

    print(f"\n{'':34} {'p50 ms':>8} {'p99 ms':>8}   page/REST p50  p99")
    for name, fig, page, call in (
        (f"sample grid, 100 of {args.count}", grid, "page", "REST samples"),
        (f"job page, {args.points} scalar points", job_page, "page", "REST scalars"),
    ):
        print(f"{name:34}")
        print(
            f"  {page:32} {fig['page_p50_ms']:8.1f} {fig['page_p99_ms']:8.1f}   "
            f"{fig['ratio_p50']:5.2f}x  {fig['ratio_p99']:5.2f}x"
        )
        print(f"  {call:32} {fig['rest_p50_ms']:8.1f} {fig['rest_p99_ms']:8.1f}")
    print(
        f"\n{args.rounds} requests of each kind, alternating; load average {load_before} "
        f"before, {load_after} after ({os.cpu_count()} CPUs)"
    )
    if args.json:
        doc = {
            "grid": grid,
            "job_page": job_page,
            "load": {"before": load_before, "after": load_after},
            **vars(args),
        }
        doc["json"] = str(args.json)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
