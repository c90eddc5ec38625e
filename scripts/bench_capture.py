"""``scripts/bench-capture``: what capturing inputs costs the serving path, and how fast captures
travel compared with a raw MQTT publish of the same bytes.

Serving. One ``edge-agent run`` process (no fleet) holds the same model twice: ``cap``, whose
package asks for the worst case (``below_confidence: 1.01``: every request is captured, its input
written to the store with an fsync), and ``nocap``, without a policy. ``bench_loadgen.py grpc
--vary`` (its own process, tritonclient, a different input on every request so no capture is
deduplicated away) measures p50/p99 at each concurrency; windows of ``cap`` and ``nocap``
alternate for ``--rounds`` rounds so background load hits both alike, and the samples of all
rounds are pooled. The figure is p50(cap) / p50(nocap); the target is <= 1.05 at c=1.

Upload. A second agent, its fleet section pointing at a Mosquitto that is not running yet,
captures ``--uploads`` records (the same model, the same inputs' size). Then the broker and a
test-side control plane (``tests/fleet/capture_cloud.py``: reassembles, verifies, acks) start;
the time from the first chunk the control plane sees to the last record stored gives the upload
rate. The baseline, in the same run and on the same broker: a paho client publishing the very
same chunk messages with QoS 1, back to back, to a plain subscriber (no acks of the protocol, no
window), timed from the first to the last message received.

Hook. Also in-process, away from the loaded sockets: what ``Capturer.after_inference`` (the
decision and the hand-off to the writer's queue, what the serving path pays) costs per call on a
CNN-sized request, with the writer thread really writing, against a plain ``np.argmax`` of the
same scores as the baseline.

Every part prints the machine's load average. It is a benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from script_support import free_port, wait_until  # noqa: E402

from model_packager.build import ArtifactInput, BuildSpec, build_package  # noqa: E402
from model_packager.signing import generate_keypair, load_private_key  # noqa: E402
from protos import fleet_capture as fc  # noqa: E402
from tests.agent.agent_process import AgentProcess  # noqa: E402

PYTHON = sys.executable
LOADGEN = REPO / "scripts" / "bench_loadgen.py"
WORST_CASE = {"below_confidence": 1.01}


def log(msg: str) -> None:
    print(msg, flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def packages(model: Path, work: Path) -> tuple[dict[str, Path], Path]:
    key, pub = work / "bench.key", work / "bench.pub"
    generate_keypair(key, pub)
    signing = load_private_key(key)
    out = {}
    for name, capture in (("cap", WORST_CASE), ("nocap", None)):
        spec = BuildSpec(name=name, version="1", artifacts=[ArtifactInput(model)], capture=capture)
        out[name] = build_package(spec, work / "packages", signing)
    return out, pub


def start_agent(
    work: Path, name: str, pub: Path, pkgs: dict[str, Path], **settings: Any
) -> AgentProcess:
    agent = AgentProcess(work / name, [pub], log_level="WARNING", **settings)
    agent.start(timeout=120)
    for pkg in pkgs.values():
        assert agent.install(pkg).result.outcome == "COMMITTED", pkg
    return agent


class Loadgen:
    """One ``bench_loadgen.py --serve`` process: one window per call."""

    def __init__(self, agent: AgentProcess, model: str, shape: str, conc: int, out: Path) -> None:
        cmd = [
            PYTHON,
            str(LOADGEN),
            "grpc",
            "--url",
            agent.address,
            "--model",
            model,
            "--shape",
            shape,
            "--concurrency",
            str(conc),
            "--vary",
            "--serve",
        ]
        self.err = open(out, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if '"ready"' not in ready:
            raise RuntimeError(f"loadgen for {model} did not start: {out.read_text()[-2000:]}")

    def window(self, warmup: float, duration: float, samples: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd = {"warmup": warmup, "duration": duration, "samples_out": str(samples)}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)
        self.err.close()


def serving(args: argparse.Namespace, work: Path, model: Path, shape: str) -> dict[str, Any]:
    pkgs, pub = packages(model, work)
    agent = start_agent(work, "serving-agent", pub, pkgs, capture={"max_records": 200})
    figures: dict[str, Any] = {}
    try:
        for conc in args.concurrency:
            gens = {
                m: Loadgen(agent, m, shape, conc, work / f"loadgen-{m}-{conc}.log")
                for m in ("nocap", "cap")
            }
            pooled: dict[str, list[np.ndarray]] = {m: [] for m in gens}
            errors = {m: 0 for m in gens}
            for r in range(args.rounds):
                for m, gen in gens.items():
                    samples = work / f"samples-{m}-{conc}-{r}.npy"
                    res = gen.window(args.warmup, args.duration, samples)
                    errors[m] += int(res.get("errors", 0))
                    pooled[m].append(np.load(samples))
            for gen in gens.values():
                gen.close()
            row = {}
            for m, parts in pooled.items():
                ms = np.concatenate(parts)
                row[m] = {
                    "requests": int(ms.size),
                    "errors": errors[m],
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                }
            row["p50_ratio"] = row["cap"]["p50_ms"] / row["nocap"]["p50_ms"]
            row["p99_ratio"] = row["cap"]["p99_ms"] / row["nocap"]["p99_ms"]
            figures[f"c{conc}"] = row
            log(
                f"c={conc}: capture off p50 {row['nocap']['p50_ms']:.2f} ms p99 "
                f"{row['nocap']['p99_ms']:.2f} ms ({row['nocap']['requests']} requests); capture "
                f"on p50 {row['cap']['p50_ms']:.2f} ms p99 {row['cap']['p99_ms']:.2f} ms "
                f"({row['cap']['requests']} requests); ratio p50 {row['p50_ratio']:.3f}, p99 "
                f"{row['p99_ratio']:.3f}; {load()}"
            )
        status = agent.status()
        figures["agent_status_models"] = len(status.models)
    finally:
        agent.stop()
    store = work / "serving-agent" / "data" / "captures"
    state = (
        json.loads((store / "state.json").read_text()) if (store / "state.json").exists() else {}
    )
    figures["captured_total"] = state.get("captured_total")
    figures["dropped_total"] = state.get("dropped_total")
    log(
        f"the store took {state.get('captured_total')} records, dropped "
        f"{state.get('dropped_total')} of them to stay within 200 records"
    )
    return figures


def upload(args: argparse.Namespace, work: Path, model: Path, shape: str) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.control_plane.conftest import start_mosquitto
    from tests.fleet.capture_cloud import CaptureCloud, anonymous_broker_conf

    pkgs, pub = packages(model, work / "upload")
    port = free_port()
    fleet = {
        "url": f"mqtt://127.0.0.1:{port}",
        "client_id": "bench-dev",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.3,
        "telemetry_interval_s": 0,
    }
    agent = start_agent(
        work, "upload-agent", pub, {"cap": pkgs["cap"]}, device_id="bench-dev", fleet=fleet
    )
    broker = cloud = None
    try:
        cmd = [PYTHON, str(LOADGEN), "grpc", "--url", agent.address, "--model", "cap"]
        cmd += ["--shape", shape, "--vary", "--warmup", "0", "--duration", "600"]
        subprocess.run([*cmd, "--requests", str(args.uploads)], capture_output=True, check=True)
        folder = work / "upload-agent" / "data" / "captures"
        wait_until(
            "captures on disk",
            lambda: len(list(folder.glob("*.cap"))) >= args.uploads,
            120,
        )
        files = sorted(folder.glob("*.cap"))
        total = sum(p.stat().st_size for p in files)
        conf = work / "mosquitto.conf"
        conf.write_text(anonymous_broker_conf(port))
        broker = start_mosquitto(conf, port, work / "mosquitto.log")
        cloud = CaptureCloud(port)
        first: list[float] = []
        original = cloud._on_chunk

        def timed(device_id: str, payload: bytes) -> None:
            if not first:
                first.append(time.monotonic())
            original(device_id, payload)

        cloud._on_chunk = timed  # type: ignore[method-assign]
        cloud.wait(lambda: len(cloud.stored) >= len(files), timeout=600, what="uploads")
        upload_s = time.monotonic() - first[0]
        data_bytes = sum(len(r.data) for r in cloud.stored.values())
        chunks = []
        for rec in cloud.stored.values():
            chunks += [fc.encode_chunk(c) for c in fc.chunks_of("bench-dev", rec.data, rec.meta)]
        log(
            f"upload: {len(cloud.stored)} records, {data_bytes / 1e6:.1f} MB of data "
            f"({total / 1e6:.1f} MB on disk) in {upload_s:.2f} s; {load()}"
        )

        # Baseline: the same chunk messages, raw QoS 1, one publisher, one subscriber.
        got: list[float] = []
        done = threading.Event()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-sub")

        def on_message(*_: Any) -> None:
            got.append(time.monotonic())
            if len(got) == len(chunks):
                done.set()

        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.subscribe("bench/raw", qos=1)
        sub.loop_start()
        pubc = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-pub")
        pubc.max_inflight_messages_set(20)
        pubc.connect("127.0.0.1", port)
        pubc.loop_start()
        time.sleep(0.5)  # both subscribed and connected before the clock starts
        infos = [pubc.publish("bench/raw", c, qos=1) for c in chunks]
        done.wait(600)
        for info in infos:
            info.wait_for_publish(60)
        raw_s = got[-1] - got[0] if len(got) > 1 else float("nan")
        pubc.loop_stop()
        sub.loop_stop()
        log(
            f"raw QoS 1 publish of the same {len(chunks)} messages: {raw_s:.2f} s; "
            f"capture upload / raw = {upload_s / raw_s:.2f}x; {load()}"
        )
        return {
            "records": len(cloud.stored),
            "data_mb": data_bytes / 1e6,
            "upload_s": upload_s,
            "upload_mb_s": data_bytes / 1e6 / upload_s,
            "raw_s": raw_s,
            "raw_mb_s": data_bytes / 1e6 / raw_s,
            "ratio": upload_s / raw_s,
            "duplicates_stored": sum(1 for n in cloud.store_count.values() if n > 1),
        }
    finally:
        agent.stop()
        if cloud is not None:
            cloud.close()
        if broker is not None:
            broker.stop()


def hook(args: argparse.Namespace, work: Path, shape: str) -> dict[str, Any]:
    from types import SimpleNamespace

    from edge_agent.capture import Capturer
    from edge_agent.config import CaptureSettings
    from edge_agent.serving.requests import InputTensor

    dims = tuple(int(d) for d in shape.split(","))
    classes = 1000 if len(dims) == 4 else 10
    spec = SimpleNamespace(name="logits", datatype="FP32", shape=(-1, classes))
    served = SimpleNamespace(
        name="cap",
        version="1",
        manifest=SimpleNamespace(capture=WORST_CASE, labels=None, output_specs=lambda: [spec]),
        hooks=None,
        inputs=[SimpleNamespace(name="input")],
        processing=SimpleNamespace(pre=None, post=None),
        has_batch_dim=True,
    )
    capturer = Capturer(CaptureSettings(max_records=100), work / "hook-captures")
    capturer.start()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(dims).astype(np.float32)
    calls, base = [], []
    try:
        for n in range(args.hook_calls):
            xi = x.copy()
            xi.reshape(-1)[0] = n
            raw = [InputTensor("input", "FP32", dims, xi)]
            results = {"logits": rng.standard_normal((1, classes)).astype(np.float32)}
            t0 = time.perf_counter_ns()
            capturer.after_inference(served, False, raw, results)  # type: ignore[arg-type]
            t1 = time.perf_counter_ns()
            int(np.argmax(results["logits"]))
            t2 = time.perf_counter_ns()
            calls.append(t1 - t0)
            base.append(t2 - t1)
            time.sleep(0.002)  # requests arrive spaced out, as at c=1
    finally:
        capturer.close()
    call_us, base_us = float(np.median(calls)) / 1e3, float(np.median(base)) / 1e3
    writer = capturer.writer
    log(
        f"hook: after_inference {call_us:.1f} us per call (median of {len(calls)}; p99 "
        f"{float(np.percentile(calls, 99)) / 1e3:.1f} us), np.argmax of the same scores "
        f"{base_us:.1f} us; {capturer.store.counters().captured_total} written, "
        f"{writer.skipped_queue_full} skipped (queue full); {load()}"
    )
    return {
        "after_inference_us_p50": call_us,
        "after_inference_us_p99": float(np.percentile(calls, 99)) / 1e3,
        "argmax_us_p50": base_us,
        "written": capturer.store.counters().captured_total,
        "skipped_queue_full": writer.skipped_queue_full,
    }


def ensure_cnn(models_dir: Path) -> Path:
    path = models_dir / "cnn.onnx"
    if not path.is_file():
        log(f"generating cnn.onnx into {models_dir} (scripts/gen_test_models.py --with-cnn)")
        cmd = [PYTHON, str(REPO / "scripts" / "gen_test_models.py"), "--out", str(models_dir)]
        subprocess.run([*cmd, "--with-cnn"], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-capture", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per window")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per window")
    p.add_argument("--rounds", type=int, default=3, help="alternating windows per model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--uploads", type=int, default=60, help="records in the upload part")
    p.add_argument("--hook-calls", type=int, default=500, help="calls in the hook part")
    p.add_argument("--mlp", action="store_true", help="the MLP instead of the CNN (quick)")
    p.add_argument("--models-dir", type=Path, default=REPO / "tests" / ".models")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = p.parse_args(argv)
    if args.mlp:
        model, shape = args.models_dir / "mlp.onnx", "1,784"
    else:
        model, shape = ensure_cnn(args.models_dir), "1,3,224,224"
    work = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    log(f"bench-capture: {model.name}, input {shape}; {load()}")
    try:
        figures = {"model": model.name, "load_start": os.getloadavg()}
        figures["hook"] = hook(args, work, shape)
        figures["serving"] = serving(args, work, model, shape)
        figures["upload"] = upload(args, work, model, shape)
        figures["load_end"] = os.getloadavg()
        c1 = figures["serving"].get("c1")
        if c1 is not None:
            verdict = "PASS" if c1["p50_ratio"] <= 1.05 else "FAIL"
            log(f"target: capture adds <= 5% p50 at c=1: {c1['p50_ratio']:.3f}x {verdict}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
    except Exception as exc:
        log(f"bench-capture: FAILED to complete: {type(exc).__name__}: {exc}; logs in {work}")
        return 0
    if args.keep:
        log(f"work folder kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
