"""``scripts/bench-shared-memory``: the CNN at c=1 through system shared memory, interleaved.

One client process runs, in alternating short rounds, (a) raw onnxruntime on the same model
with the same thread settings, (b) ``tritonclient.grpc`` sending the 602 KB input over gRPC,
(c) the same client with input and output in system shared memory (the frame is written into
the region before each request and the answer read from it: the client's copies are measured)
and (d) the same without writing the frame (a producer that writes frames anyway). The agent
is a real ``edge-agent run`` process. Interleaving in one process puts every configuration
under the same machine load, which ``scripts/bench-serving``'s separate processes do not; the
fastest tenth (p10) is printed beside the median because on a shared machine the median of the
single-threaded raw reference moves most with other load.

Prints p50, p10 and the differences to raw onnxruntime (target: shared memory p50 <= raw + 1
ms) with the machine's load. It is a benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_install import agent_server, install  # noqa: E402
from script_support import ort_cpu_session  # noqa: E402

from model_packager.build import ArtifactInput, BuildSpec, build_package  # noqa: E402
from model_packager.signing import generate_keypair, load_private_key  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=30, help="requests per configuration")
    p.add_argument("--models-dir", type=Path, default=REPO / "tests" / ".models")
    p.add_argument(
        "--agent-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra agent setting (YAML value), e.g. inline_threshold_ms=20",
    )
    a = p.parse_args(argv)

    import tritonclient.grpc as tcg
    import tritonclient.utils.shared_memory as shm

    model = a.models_dir / "cnn.onnx"
    if not model.exists():
        print(f"{model} is missing: run scripts/gen-test-models --with-cnn", file=sys.stderr)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-shm-"))
    load0 = os.getloadavg()
    psutil.cpu_percent(None)
    handles: list[object] = []
    try:
        generate_keypair(workdir / "k", workdir / "k.pub")
        spec = BuildSpec(name="cnn", version="1", artifacts=[ArtifactInput(model)])
        pkg = build_package(spec, workdir / "pkg", load_private_key(workdir / "k"))
        extra = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in a.agent_option)}
        with agent_server("agent", workdir, workdir / "k.pub", None, extra).start() as server:
            install(server, pkg)
            client = tcg.InferenceServerClient(server.url)
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            tag = f"bench-shm-{os.getpid()}"
            h_in = shm.create_shared_memory_region(f"{tag}-in", f"/{tag}-in", x.nbytes)
            h_out = shm.create_shared_memory_region(f"{tag}-out", f"/{tag}-out", 4000)
            handles += [h_in, h_out]
            client.register_system_shared_memory(f"{tag}-in", f"/{tag}-in", x.nbytes)
            client.register_system_shared_memory(f"{tag}-out", f"/{tag}-out", 4000)
            in_shm = tcg.InferInput("input", [1, 3, 224, 224], "FP32")
            in_shm.set_shared_memory(f"{tag}-in", x.nbytes)
            out_shm = tcg.InferRequestedOutput("logits")
            out_shm.set_shared_memory(f"{tag}-out", 4000)
            in_net = tcg.InferInput("input", [1, 3, 224, 224], "FP32")
            in_net.set_data_from_numpy(x)
            session = ort_cpu_session(model, 1, 1)

            def raw() -> None:
                session.run(None, {"input": x})

            def net() -> None:
                client.infer("cnn", [in_net]).as_numpy("logits")

            def via_shm() -> None:
                shm.set_shared_memory_region(h_in, [x])
                client.infer("cnn", [in_shm], outputs=[out_shm])
                shm.get_contents_as_numpy(h_out, np.float32, [1, 1000])

            def via_shm_no_write() -> None:
                client.infer("cnn", [in_shm], outputs=[out_shm])
                shm.get_contents_as_numpy(h_out, np.float32, [1, 1000])

            configs: dict[str, Callable[[], None]] = {
                "raw onnxruntime": raw,
                "agent, gRPC": net,
                "agent, shared memory": via_shm,
                "agent, shared memory (no frame write)": via_shm_no_write,
            }
            times: dict[str, list[float]] = {k: [] for k in configs}
            for f in configs.values():
                for _ in range(20):
                    f()
            for r in range(a.rounds):
                order = list(configs) if r % 2 == 0 else list(reversed(configs))
                for name in order:
                    f = configs[name]
                    for _ in range(a.per_round):
                        t0 = time.perf_counter()
                        f()
                        times[name].append((time.perf_counter() - t0) * 1e3)
            client.unregister_system_shared_memory()
            client.close()
        report(times, load0, extra)
    except Exception as exc:  # a benchmark reports, it does not fail
        print(f"bench-shared-memory failed: {exc!r}", file=sys.stderr)
    finally:
        for h in handles:
            shm.destroy_shared_memory_region(h)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(
    times: dict[str, list[float]], load0: tuple[float, float, float], extra: dict[str, object]
) -> None:
    busy = psutil.cpu_percent(None)
    print("\nCNN (1x3x224x224 FP32, 602 KB) at c=1, interleaved in one client process")
    print(
        f"  machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; CPUs busy {busy:.0f}% over the run"
    )
    if extra:
        print(f"  agent settings: {extra}")
    raw = times["raw onnxruntime"]
    raw50, raw10 = np.percentile(raw, 50), np.percentile(raw, 10)
    print(f"  {'':40} {'p50 ms':>8} {'p10 ms':>8} {'p50-raw':>8} {'p10-raw':>8}   n")
    for name, ts in times.items():
        p50, p10 = np.percentile(ts, 50), np.percentile(ts, 10)
        print(
            f"  {name:40} {p50:8.3f} {p10:8.3f} {p50 - raw50:+8.3f} {p10 - raw10:+8.3f} "
            f"{len(ts):4d}"
        )
    d = np.percentile(times["agent, shared memory"], 50) - raw50
    print(f"  target: shared memory p50 <= raw + 1 ms: {d:+.3f} ms {'PASS' if d <= 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
    sys.exit(0)
