"""Scaled-layout benchmark: dataset import, publish and materialise on PostgreSQL + an S3 store,
next to SQLite + local folders (and PostgreSQL + local folders, to tell the two apart), in the
same run on the same generated images.

Each round runs both layouts one after the other, each on a fresh database and data folder (a
fresh bucket for S3), through the REST API of an in-process control plane (no broker). The S3
server is moto's (``tests/s3.py``): it runs in Python on this machine, so the S3 figures include
the server's own CPU, which a real object store on its own hosts would not take from the control
plane. PostgreSQL is a throwaway cluster (``tests/pg.py``) with fsync off. The table shows the
median seconds of each phase and its ratio to the single-machine default measured in the same
run; the target (issue 17) is <= 1.5x for import and publish. Load averages are printed before
and after: on a shared 2-core machine they explain most of the spread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from script_support import in_process_control_plane  # noqa: E402

API = "/api/v1"
TOKEN = "bench-token-0123456789abcdef"
PHASES = ("import_folder", "publish", "materialize")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_layout(work: Path, src: Path, overrides: dict[str, Any], tag: str) -> dict[str, float]:
    """Import ``src``, publish V001 and materialise it on a fresh node; seconds per phase."""
    from fastapi.testclient import TestClient

    from control_plane.core.context import AppContext
    from control_plane.core.settings import Settings
    from control_plane.datasets.versions.service import VersionService

    def settings(node: str) -> Settings:
        return Settings(
            api_token=TOKEN,
            mqtt_password="bench-mqtt-password-123",
            data_dir=work / f"{tag}-{node}",
            dataset_import_roots=[src.parent],
            **overrides,
        )

    first = settings("a")
    if "database_url" not in overrides:  # SQLite: the second node must read the same file
        overrides = {**overrides, "database_url": first.resolved_database_url}
        first = settings("a")
    app, ctx = in_process_control_plane(first)
    api = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    out: dict[str, float] = {}
    try:
        ds = api.post(
            f"{API}/datasets", json={"name": "bench", "type": "image_classification"}
        ).json()["id"]
        t = time.perf_counter()
        r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(src)})
        out["import_folder"] = time.perf_counter() - t
        assert r.status_code == 200, r.text
        t = time.perf_counter()
        r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.8, "seed": 1})
        out["publish"] = time.perf_counter() - t
        assert r.status_code == 201, r.text
    finally:
        ctx.close()
    # A second node reads the version as a job would (local: the folder is already there).
    node = AppContext.from_settings(settings("b") if "storage_url" in overrides else first)
    try:
        t = time.perf_counter()
        with node.sessions() as session:
            versions = VersionService(session, node)
            folder = versions.path(versions.get(ds, "V001"))
        out["materialize"] = time.perf_counter() - t
        assert (folder / "version.json").exists()
    finally:
        node.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="images (default 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    from tests.datasets.digits import write_digits
    from tests.pg import start_cluster
    from tests.s3 import start_s3_server

    load_before = _load()
    results: dict[str, dict[str, list[float]]] = {"default": {}, "postgres": {}, "scaled": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        write_digits(work / "in" / "digits", per_class=args.count // 10)
        src = work / "in" / "digits"
        cluster = start_cluster()
        s3 = start_s3_server(work / "s3.log")
        try:
            for rnd in range(max(1, args.rounds)):
                layouts = {
                    "default": {},
                    "postgres": {"database_url": cluster.create_database()},
                    "scaled": {
                        "database_url": cluster.create_database(),
                        **s3.settings(s3.new_bucket()),
                    },
                }
                for name, overrides in layouts.items():
                    got = run_layout(work, src, overrides, f"{name}-{rnd}")
                    for phase, secs in got.items():
                        results[name].setdefault(phase, []).append(secs)
        finally:
            s3.stop()
            cluster.stop()
    load_after = _load()

    print(
        f"{args.count} images, {args.rounds} rounds; load average {load_before} before, "
        f"{load_after} after ({os.cpu_count()} CPUs)"
    )
    print(
        f"\n{'phase':<15}{'SQLite+local s':>15}{'PG+local s':>12}{'ratio':>7}"
        f"{'PG+S3 s':>10}{'ratio':>8}  target (PG+S3)"
    )
    table: dict[str, Any] = {"load": {"before": load_before, "after": load_after}}
    for phase in PHASES:
        base = statistics.median(results["default"][phase])
        pg = statistics.median(results["postgres"][phase])
        scaled = statistics.median(results["scaled"][phase])
        r_pg, r_scaled = (pg / base, scaled / base) if base > 0 else (0.0, 0.0)
        target = ""
        if phase in ("import_folder", "publish"):
            target = f"<= 1.5x {'ok' if r_scaled <= 1.5 else 'MISSED'}"
        print(
            f"{phase:<15}{base:15.2f}{pg:12.2f}{r_pg:7.2f}{scaled:10.2f}{r_scaled:8.2f}  {target}"
        )
        table[phase] = {
            "default_s": base,
            "postgres_s": pg,
            "scaled_s": scaled,
            "postgres_ratio": r_pg,
            "scaled_ratio": r_scaled,
        }
    print("\nmaterialize: SQLite+local reads the folder it published; PostgreSQL+S3 downloads the")
    print("version and every sample on a second node (what a job on another replica pays once).")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
