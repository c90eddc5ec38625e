"""Dataset benchmark: import (folder, zip), publish and list, against a plain file copy.

Every measured phase runs in its own child process, so its peak RSS (``ru_maxrss``) is its own.
The imports and the publish go through the REST API of an in-process control plane (no broker),
exactly as a client would call them. Targets (from issue 5): import <= 5x the copy, publish <= 3x
the copy, and the p99 of listing a page of 100 samples with 10,000 present.

Making 10,000 files costs mostly kernel time, which on a shared VM varies several-fold from one
second to the next, for the copy as much as for the imports. So the copy, the imports and the
publish run ``--rounds`` times, interleaved (copy, folder, zip, publish, copy, ...), each into
fresh folders, and the table shows the median of each (ratios are median over median copy) with
the range; before each phase the file system is synced (``os.sync``, not timed), so that no phase
pays for writing back the files of the one before it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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

from script_support import in_process_control_plane, peak_rss_mb  # noqa: E402

API = "/api/v1"
TOKEN = "bench-token-0123456789abcdef"


def _client(data: Path, roots: list[Path]) -> Any:
    import logging

    from fastapi.testclient import TestClient

    from control_plane.core.settings import Settings

    logging.disable(logging.INFO)
    settings = Settings(
        api_token=TOKEN,
        mqtt_password="bench-mqtt-password-123",
        data_dir=data,
        dataset_import_roots=roots,
    )
    app, _ = in_process_control_plane(settings)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def _dataset(api: Any) -> str:
    r = api.get(f"{API}/datasets")
    if r.json():
        return str(r.json()[0]["id"])
    r = api.post(f"{API}/datasets", json={"name": "bench", "type": "image_classification"})
    return str(r.json()["id"])


def phase(name: str, work: Path, count: int, rnd: int = 0) -> dict[str, Any]:
    """One measured phase of round ``rnd`` (runs in a child process)."""
    src, data = work / "digits", work / f"cp-{rnd}"
    out: dict[str, Any] = {}
    if name == "copy":
        t, cpu = time.perf_counter(), time.process_time()
        shutil.copytree(src, work / f"copy-{rnd}")
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
    elif name in ("import_folder", "import_zip"):
        target = data if name == "import_folder" else work / f"cp-zip-{rnd}"
        api = _client(target, [work])
        ds = _dataset(api)
        t, cpu = time.perf_counter(), time.process_time()
        if name == "import_folder":
            r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(src)})
        else:
            with open(work / "digits.zip", "rb") as f:
                r = api.post(f"{API}/datasets/{ds}/archive", files={"file": ("d.zip", f)})
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
        out["imported"] = r.json()["imported"]
    elif name == "publish":
        api = _client(data, [work])
        ds = _dataset(api)
        t, cpu = time.perf_counter(), time.process_time()
        r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.8, "seed": 1})
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
        out["samples"] = r.json()["sample_count"]
    elif name == "list":
        api = _client(data, [work])
        ds = _dataset(api)
        rng = random.Random(0)
        lat = []
        for i in range(300):
            params: dict[str, Any] = {"offset": rng.randrange(0, count - 100), "limit": 100}
            if i % 3 == 1:
                params = {"label": str(rng.randrange(10)), "limit": 100}
            t = time.perf_counter()
            r = api.get(f"{API}/datasets/{ds}/samples", params=params)
            lat.append(time.perf_counter() - t)
            page = r.json()
            assert len(page["items"]) == min(100, page["total"] - page["offset"]), page["total"]
        lat.sort()
        out["p50_ms"] = statistics.median(lat) * 1000
        out["p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000
        out["seconds"] = sum(lat)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _run_child(name: str, work: Path, count: int, rnd: int = 0) -> dict[str, Any]:
    os.sync()  # the previous phase's files are on disk before this one starts
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            *("--phase", name, "--work", str(work), "--count", str(count), "--round", str(rnd)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="images (default 10,000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of copy/imports/publish (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.work, args.count, args.round)))
        return

    from tests.datasets.digits import write_digits

    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        write_digits(work / "digits", per_class=args.count // 10)
        with zipfile.ZipFile(work / "digits.zip", "w") as zf:
            for p in sorted((work / "digits").rglob("*.png")):
                zf.write(p, p.relative_to(work / "digits").as_posix())
        size = sum(p.stat().st_size for p in (work / "digits").rglob("*.png"))
        print(
            f"generated {args.count} PNGs ({size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s"
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        for rnd in range(max(1, args.rounds)):
            for n in ("copy", "import_folder", "import_zip", "publish"):
                runs.setdefault(n, []).append(_run_child(n, work, args.count, rnd))
        runs["list"] = [_run_child("list", work, args.count)]
    load_after = _load()

    results: dict[str, Any] = {}
    for n, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        results[n] = {
            **rs[-1],
            "seconds": statistics.median(secs),
            "cpu_seconds": statistics.median(r.get("cpu_seconds", 0.0) for r in rs),
            "runs": secs,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
    copy = results["copy"]["seconds"]
    print(f"load average {load_before} before, {load_after} after; {len(runs['copy'])} rounds")
    head = f"{'phase':<16}{'median s':>9}{'x copy':>8}{'range s':>14}{'cpu s':>7}"
    head += f"{'peak RSS MB':>13}"
    print(f"\n{head}  target")
    targets = {"import_folder": 5, "import_zip": 5, "publish": 3}
    for n, r in results.items():
        ratio = r["seconds"] / copy
        results[n]["x_copy"] = ratio
        target = (
            f"<= {targets[n]}x {'ok' if ratio <= targets[n] else 'MISSED'}"
            if (n in targets)
            else ""
        )
        shown = "" if n in ("copy", "list") else f"{ratio:8.1f}"
        spread = "" if n == "list" else f"{min(r['runs']):.2f}-{max(r['runs']):.2f}"
        cpu = "" if n == "list" else f"{r['cpu_seconds']:7.2f}"
        print(
            f"{n:<16}{r['seconds']:9.2f}{shown:>8}{spread:>14}{cpu:>7}"
            f"{r['peak_rss_mb']:13.0f}  {target}"
        )
    lst = results["list"]
    print(f"\nlist 100 of {args.count}: p50 {lst['p50_ms']:.1f} ms, p99 {lst['p99_ms']:.1f} ms")
    if args.json:
        results["load"] = {"before": load_before, "after": load_after}
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
