"""``scripts/bench-variants``: one MobileNetV2 package, every variant served by the real agent.

Builds (or reuses) the Keras MobileNetV2 96x96 of ``tests/convert/models.py`` (weights=None,
trained a few steps on a synthetic task so int8 has something to agree with), converts it with
``model-packager convert`` into one signed package with every variant, then for each variant
starts an agent that prefers it, installs the package, and measures through tritonclient:
latency at concurrency 1 and throughput at concurrency 2 (closed loop, batch 1). The int8
speed-up over fp32 is the ratio of the two measured in this one run, per runtime.

Conversion runs in a subprocess (TensorFlow stays out of this process); so does each agent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model_packager.archive import open_package  # noqa: E402
from model_packager.signing import generate_keypair  # noqa: E402
from tests.agent.agent_process import AgentProcess  # noqa: E402

TARGETS = ["onnx-fp32", "onnx-int8-static", "tflite-fp32", "tflite-fp16", "tflite-int8"]
CACHE = REPO / "tests" / ".models" / "convert"


def build_inputs(work: Path) -> tuple[Path, Path]:
    """The cached test model and samples (same files as tests/convert uses)."""
    model, samples = CACHE / "v1-mobilenet_v2_96.keras", CACHE / "v1-mobilenet_samples.npy"
    if not (model.exists() and samples.exists()):
        code = (
            f"import numpy as np, sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from tests.convert import models\n"
            f"models.mobilenet_v2(__import__('pathlib').Path({str(model)!r}))\n"
            f"np.save({str(samples)!r}, models.class_images(64, seed=7)[0])\n"
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", code], check=True)
    return model, samples


def convert(model: Path, samples: Path, key: Path, out: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "model_packager.cli",
        "convert",
        str(model),
        "--name",
        "mobilenet",
        "--version",
        "1",
        "--samples",
        str(samples),
        "--key",
        str(key),
        "--out-dir",
        str(out),
    ]
    for t in TARGETS:
        cmd += ["--target", t]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    print(done.stdout.rsplit("\n", 2)[0], file=sys.stderr)
    return Path(done.stdout.strip().splitlines()[-1])


def closed_loop(address: str, x: np.ndarray, concurrency: int, seconds: float) -> dict[str, float]:
    import tritonclient.grpc as tc

    lat: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def worker(i: int) -> None:
        client = tc.InferenceServerClient(address)
        inp = tc.InferInput("input_layer", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(3):  # warm-up
            client.infer("mobilenet", [inp])
        barrier.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            client.infer("mobilenet", [inp])
            lat[i].append((time.perf_counter() - t0) * 1000)
        client.close()

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_ms = sorted(v for part in lat for v in part)
    return {
        "p50_ms": all_ms[len(all_ms) // 2],
        "p90_ms": all_ms[int(len(all_ms) * 0.9)],
        "throughput": len(all_ms) / elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        work = Path(tmp)
        generate_keypair(work / "k.key", work / "k.pub")
        model, samples = build_inputs(work)
        print("converting (all variants, parity-gated) ...", file=sys.stderr)
        package = convert(model, samples, work / "k.key", work / "pkg")
        manifest = open_package(package).manifest
        x = np.load(samples)[:1]
        rows = []
        for v in manifest.variants:
            agent = AgentProcess(
                work / f"agent-{v.name}",
                [work / "k.pub"],
                variant_preference=[v.name],
                log_level="WARNING",
            )
            agent.start()
            try:
                r = agent.install(package)
                assert r.model.variant == v.name, (r.model.variant, v.name)
                c1 = closed_loop(agent.address, x, 1, args.seconds)
                c2 = closed_loop(agent.address, x, 2, args.seconds)
            finally:
                agent.stop()
            p = v.parity
            rows.append(
                {
                    "variant": v.name,
                    "precision": v.precision,
                    "size_mb": v.artifact.size / 1e6,
                    "top1": p.top1_agreement if p else None,
                    "max_abs": p.max_abs_error if p else None,
                    "c1_p50_ms": c1["p50_ms"],
                    "c1_p90_ms": c1["p90_ms"],
                    "c2_throughput": c2["throughput"],
                }
            )
            print(f"  {v.name}: done", file=sys.stderr)

    by = {r["variant"]: r for r in rows}
    print(
        f"{'variant':18} {'size MB':>8} {'top-1':>6} {'max abs':>9} {'p50 c=1':>9} "
        f"{'p90 c=1':>9} {'req/s c=2':>10}"
    )
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.3f}"
        print(
            f"{r['variant']:18} {r['size_mb']:8.2f} {top1:>6} {r['max_abs']:9.2g} "
            f"{r['c1_p50_ms']:7.2f}ms {r['c1_p90_ms']:7.2f}ms {r['c2_throughput']:10.1f}"
        )
    for runtime, fp32, int8 in (
        ("onnx", "onnx-fp32", "onnx-int8-static"),
        ("tflite", "tflite-fp32", "tflite-int8"),
    ):
        if fp32 in by and int8 in by:
            lat = by[fp32]["c1_p50_ms"] / by[int8]["c1_p50_ms"]
            thr = by[int8]["c2_throughput"] / by[fp32]["c2_throughput"]
            print(f"{runtime} int8 speed-up over fp32: latency x{lat:.2f}, throughput x{thr:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
