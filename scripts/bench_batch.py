"""``scripts/bench-batch``: a batch service over N CNN image inputs against a raw onnxruntime loop.

Same run, same model, same files. The model is ``cnn.onnx`` (Keras MobileNetV2, random init,
NCHW 224x224, from ``scripts/gen-test-models --with-cnn``), imported into an in-process control
plane with image preprocessing (RGB, 224x224, /255, NCHW) and softmax + top-5 postprocessing.
The inputs are N synthetic 224x224 PNGs (gradients and boxes, seeded), uploaded as one zip
(``POST /services/inputs``); the batch service runs them on its agent replica (a separate
process, as always).

The baseline is what a person would write without the product: for each file, decode it with
Pillow, scale, transpose to NCHW, ``session.run`` with onnxruntime's default threads (the agent's
default too), softmax and top-5 with numpy. It runs before and after the batch service and the
mean is used, so a change of machine load during the run weighs on both sides.

Figures: the agent job's own time (its ``job.json``: created -> finished; inputs read, decoded,
inferred, result lines written and fsynced), and end to end (service created -> succeeded: replica
start, package install, the job and the control plane's polling and collecting). The ratio is
raw loop time / job time (a throughput ratio; the target is >= 0.9). The machine's load average
is printed before and after. Always exits 0 on measurement: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = REPO / "tests" / ".models"
SIZE = 224
PRE = {
    "input": "input",
    "color": "RGB",
    "resize": [SIZE, SIZE],
    "scale": 1 / 255,
    "layout": "NCHW",
    "dtype": "FP32",
}
POST = {"output": "logits", "softmax": True, "top_k": 5}
TOKEN = "bench-batch-token-0123456789abcdef"
API = "/api/v1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_cnn() -> Path:
    path = MODELS / "cnn.onnx"
    if not path.exists():
        log("building cnn.onnx (scripts/gen-test-models --with-cnn, TensorFlow, ~1 min) ...")
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "gen_test_models.py"), "--with-cnn"],
            check=True,
            cwd=REPO,
        )
    return path


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    """Smooth synthetic RGB images (they compress like photos, not like noise)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    paths = []
    for i in range(count):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = ramp[np.newaxis, :, np.newaxis] if i % 2 else ramp[:, np.newaxis, np.newaxis]
        pixels = (c0 * (1 - t) + c1 * t).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (SIZE, SIZE, 3)).copy()
        im = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, SIZE - 40, 2))
            w, h = (int(v) for v in rng.integers(20, 80, 2))
            draw.rectangle(
                (x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
        path = folder / f"img-{i:05d}.png"
        im.save(path)
        paths.append(path)
    return paths


def raw_loop(model: Path, files: list[Path]) -> float:
    """Seconds for decode + preprocess + run + softmax/top-5 over every file, one at a time."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    kept = 0
    t0 = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((SIZE, SIZE))
            x = np.asarray(rgb, dtype=np.float32) * np.float32(1 / 255)
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])
        logits = session.run(None, {name: x})[0][0]
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        kept += int(np.argsort(-probs)[:5][0] >= 0)
    elapsed = time.perf_counter() - t0
    assert kept == len(files)
    return elapsed


def batch_service(work: Path, model: Path, files: list[Path]) -> dict[str, Any]:
    """The same files through a batch service of an in-process control plane."""
    from fastapi.testclient import TestClient

    from control_plane.app import create_app
    from control_plane.core.settings import Settings

    settings = Settings(
        dev_mode=True,
        api_token=TOKEN,
        data_dir=work / "cp",
        embedded_broker_port=0,
        dataset_max_archive_members=max(10_000, len(files) + 10),
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in files:
            zf.write(path, path.name)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings), headers=headers) as api:
        with open(model, "rb") as f:
            r = api.post(
                f"{API}/models/import",
                files={"file": ("cnn.onnx", f, "application/octet-stream")},
                data={
                    "name": "cnn",
                    "labels": json.dumps([f"class-{i}" for i in range(1000)]),
                    "preprocessing": json.dumps(PRE),
                    "postprocessing": json.dumps(POST),
                    "targets": json.dumps(["onnx-fp32"]),
                },
            )
        r.raise_for_status()
        version = r.json()["version"]
        deadline = time.monotonic() + 600
        while (mv := api.get(f"{API}/models/cnn/versions/{version}").json())[
            "state"
        ] == "converting":
            if time.monotonic() > deadline:
                raise TimeoutError("model conversion")
            time.sleep(0.5)
        if mv["state"] != "ready":
            raise RuntimeError(f"model import failed: {mv.get('error')}")
        r = api.post(f"{API}/services/inputs", files={"file": ("inputs.zip", buf.getvalue())})
        r.raise_for_status()
        upload = r.json()
        assert upload["count"] == len(files), upload
        body = {
            "name": "bench",
            "type": "batch",
            "models": [{"model": "cnn", "version": str(version)}],
            "input": {"upload": upload["id"]},
        }
        t0 = time.perf_counter()
        r = api.post(f"{API}/services", json=body)
        r.raise_for_status()
        while (s := api.get(f"{API}/services/bench").json())["state"] not in (
            "succeeded",
            "failed",
        ):
            time.sleep(0.2)
        end_to_end = time.perf_counter() - t0
        if s["state"] != "succeeded":
            raise RuntimeError(f"batch service failed: {s['reason']}")
        rows = api.get(f"{API}/services/bench/results", params={"limit": 5}).json()
        assert rows["total"] == len(files) and all(r["error"] is None for r in rows["items"])
        job_files = list((work / "cp" / "services" / "bench").rglob("jobs/*/job.json"))
        job = json.loads(job_files[0].read_text())
        return {
            "job_s": job["finished_at"] - job["created_at"],
            "end_to_end_s": end_to_end,
            "failed_rows": s["batch"]["failed"],
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="inputs (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    model = ensure_cnn()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        log(f"writing {args.count} images ...")
        files = write_images(work / "images", args.count, args.seed)
        load_before = os.getloadavg()
        log("raw onnxruntime loop (1/2) ...")
        raw1 = raw_loop(model, files)
        log("batch service ...")
        batch = batch_service(work, model, files)
        log("raw onnxruntime loop (2/2) ...")
        raw2 = raw_loop(model, files)
        load_after = os.getloadavg()

    raw = (raw1 + raw2) / 2
    figures = {
        "inputs": args.count,
        "raw_loop_s": [round(raw1, 2), round(raw2, 2)],
        "raw_per_s": round(args.count / raw, 1),
        "job_s": round(batch["job_s"], 2),
        "job_per_s": round(args.count / batch["job_s"], 1),
        "end_to_end_s": round(batch["end_to_end_s"], 2),
        "ratio_job_vs_raw": round(raw / batch["job_s"], 3),
        "ratio_end_to_end_vs_raw": round(raw / batch["end_to_end_s"], 3),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    print(f"batch service vs raw onnxruntime loop, {args.count} MobileNetV2 224x224 PNG inputs")
    print(f"  raw loop          {raw1:8.2f} s, {raw2:8.2f} s  ({figures['raw_per_s']} inputs/s)")
    print(f"  batch job         {batch['job_s']:8.2f} s  ({figures['job_per_s']} inputs/s)")
    print(f"  end to end        {batch['end_to_end_s']:8.2f} s  (replica start + install + job)")
    print(f"  ratio (job)       {figures['ratio_job_vs_raw']:.3f}x  (target >= 0.9)")
    print(f"  ratio (end to end) {figures['ratio_end_to_end_vs_raw']:.3f}x")
    print(
        f"  machine: {os.cpu_count()} CPUs, load average {figures['loadavg_before']} before, "
        f"{figures['loadavg_after']} after"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
