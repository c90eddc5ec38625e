"""``scripts/bench-conversion-zoo``: how much of the Keras zoo the converter takes.

Every constructor in ``keras.applications`` is built with ``weights=None`` at its smallest input
(``tests/convert/models.py``: 32x32, 80x80 for the Inception family and Xception), trained a few
steps on a synthetic task so its outputs depend on the input, saved, and converted by
``model_packager.convert`` to the default targets with the task's images as parity and
calibration samples. Each architecture runs in its own subprocess (memory is returned, a crash
or a timeout costs one row); none is skipped silently: one that does not build says why.

Printed: one row per architecture and target (kept / dropped with the reason, max abs error,
top-1 agreement, size, seconds), then per target the share kept and the share that converted
(passed or not the gate), and the median conversion time per architecture as a ratio to the
conversion of a small dense model measured in the same run (the baseline), with the machine's
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["onnx-fp32", "tflite-fp32", "tflite-fp16", "tflite-int8"]
LARGE = {"NASNetLarge", "EfficientNetB7", "EfficientNetV2L", "ConvNeXtXLarge", "ConvNeXtLarge"}
TIMEOUT_S = 1800


def one(name: str, work: Path, steps: int) -> dict[str, Any]:
    """Build and convert one architecture (runs in the child process)."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from model_packager.convert import ConvertSpec, convert
    from tests.convert import models

    row: dict[str, Any] = {"name": name}
    t0 = time.perf_counter()
    try:
        if name == "_baseline":
            tf = models._tf()
            tf.keras.utils.set_random_seed(0)
            m = tf.keras.Sequential(
                [tf.keras.Input((32, 32, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)]
            )
            path = work / "baseline.keras"
            m.save(str(path))
            samples = models.class_images(64, seed=7, size=32)[0]
        else:
            path, samples = models.zoo_model(name, work / f"{name}.keras", steps=steps)
    except Exception as exc:
        row["build_error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return row
    row["build_s"] = round(time.perf_counter() - t0, 1)
    row["input"] = list(samples.shape[1:])
    np.save(work / "samples.npy", samples)
    t0 = time.perf_counter()
    try:
        report = convert(
            ConvertSpec(
                source=path,
                name=name.lower(),
                version="1",
                targets=TARGETS,
                samples=work / "samples.npy",
            ),
            work / "out",
        )
        variants = report.variants
    except Exception as exc:  # every target failed: the report is on the exception
        variants = getattr(getattr(exc, "report", None), "variants", [])
        row["error"] = " ".join(str(exc).split())[:300]
    row["convert_s"] = round(time.perf_counter() - t0, 1)
    row["targets"] = {
        v.name: {
            "status": v.status,
            "converted": v.parity is not None,
            "reason": "" if v.status == "kept" else v.reason[:160],
            "max_abs": None if v.parity is None else v.parity.max_abs_error,
            "scale": None if v.parity is None else v.parity.output_scale,
            "top1": None if v.parity is None else v.parity.top1_agreement,
            "mb": round(v.size / 1e6, 2),
            "seconds": round(v.seconds, 1),
        }
        for v in variants
    }
    return row


def run_child(name: str, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as tmp:
        out = Path(tmp) / "row.json"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--work",
                    tmp,
                    "--json",
                    str(out),
                    "--steps",
                    str(steps),
                ],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"name": name, "error": f"timed out after {TIMEOUT_S}s"}
        if not out.exists() and proc.returncode == -9:
            return {"name": name, "error": "killed by SIGKILL (the kernel's OOM killer here)"}
        if not out.exists():
            tail = " ".join((proc.stderr or "").split()[-40:])
            return {"name": name, "error": f"child exited {proc.returncode}: {tail[-300:]}"}
        row: dict[str, Any] = json.loads(out.read_text())
        return row


def architectures() -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.convert import models; "
        "print('\\n'.join(models.zoo_architectures()))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return [line for line in out.stdout.split() if line]


def cell(t: dict[str, Any] | None) -> str:
    if t is None:
        return "-"
    if t["status"] == "kept":
        top1 = "" if t["top1"] is None else f" top1 {t['top1']:.2f}"
        return f"ok {t['mb']}MB{top1}"
    return f"DROP: {t['reason'][:70]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    ap.add_argument("--skip-large", action="store_true", help=f"leave out {sorted(LARGE)}")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument(
        "--steps",
        type=int,
        default=30,
        help="training batches before converting (default 30): an untrained network's outputs "
        "are near-ties, on which fp16 and int8 gates judge noise",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        row = one(args.child, args.work, args.steps)
        args.json.write_text(json.dumps(row))
        return 0

    names = args.only or architectures()
    if args.skip_large and not args.only:
        print(f"left out (--skip-large): {', '.join(sorted(LARGE & set(names)))}")
        names = [n for n in names if n not in LARGE]
    load0 = os.getloadavg()
    baseline = run_child("_baseline", args.steps)
    base_s = baseline.get("convert_s") or 1.0
    print(
        f"baseline (dense 32x32x3 -> 10) converts in {base_s}s; load {load0[0]:.1f}; "
        f"{args.steps} training steps per architecture",
        flush=True,
    )
    rows = []
    for name in names:
        row = run_child(name, args.steps)
        rows.append(row)
        if "build_error" in row:
            print(f"{name:22} does not build: {row['build_error']}", flush=True)
            continue
        cells = "  ".join(f"{t}: {cell(row.get('targets', {}).get(t))}" for t in TARGETS)
        extra = f"  [{row['error']}]" if row.get("error") else ""
        print(f"{name:22} {row.get('convert_s', '-')}s  {cells}{extra}", flush=True)

    built = [r for r in rows if "build_error" not in r]
    print(f"\n{len(built)} of {len(rows)} architectures build with weights=None")
    print(f"{'target':14} {'converted':>10} {'kept (gate)':>12}")
    for t in TARGETS:
        conv = sum(1 for r in built if r.get("targets", {}).get(t, {}).get("converted"))
        kept = sum(1 for r in built if r.get("targets", {}).get(t, {}).get("status") == "kept")
        n = max(len(built), 1)
        print(f"{t:14} {conv / n:>9.0%} {kept / n:>11.0%}   ({conv}/{kept} of {len(built)})")
    times = [r["convert_s"] for r in built if "convert_s" in r]
    if times:
        med = statistics.median(times)
        print(f"median conversion time {med:.1f}s = {med / base_s:.1f} x baseline")
    print(f"load average before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f} (2 cores here)")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
