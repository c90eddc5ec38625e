"""``scripts/bench-install``: what installing a package costs the agent, before and after.

In one run on this machine:

1. **Verification CPU per MiB**, in this process, on a generated ~20 MiB package (an ONNX
   model with one large weight; nothing downloaded): the path the agent used before (open and
   check the archive, verify the signature and every member digest, digest the whole file,
   extract with digests again: four reads) against the one pass (``model_packager.unpack``),
   with the signature checked three ways: through OpenSSL in process as the agent does now
   (``signature_check.verify_without_cryptography``), with ``cryptography`` in process
   (``signature_check_in_child: false``), and in a child process (the fallback where the
   process's libcrypto cannot check Ed25519). CPU is this process's plus its children's (the
   signature check), the median of interleaved repetitions.
2. **The agent itself**: a real ``edge-agent run`` installs the same package through
   ``InstallPackage``; its CPU seconds (children included) for the whole install (verify, stage,
   load, self-test, activate, commit) and its RSS right after. Then an agent installs the MLP and
   serves 500 gRPC requests: RSS after the install and after the requests (the issue's budgets:
   <= 100 MB right after an install, <= 90 MB serving the MLP after 500 requests). With
   ``--baseline-src DIR`` the same agent runs from another source tree too (e.g. the main
   branch) for a before/after comparison in the same run.
3. **Import cost**: CPU seconds and RSS of a fresh interpreter importing ``edge_agent.app``,
   per source tree.

Figures are printed with the machine's load during the run. It is a benchmark, not a test: it
always exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_serving import Server  # noqa: E402
from script_support import console_script  # noqa: E402

from model_packager.archive import extract_package, verify_package  # noqa: E402
from model_packager.build import ArtifactInput, BuildSpec, build_package  # noqa: E402
from model_packager.signature_check import (  # noqa: E402
    verify_in_child,
    verify_without_cryptography,
)
from model_packager.signing import (  # noqa: E402
    TrustStore,
    generate_keypair,
    load_private_key,
    verify_manifest,
)
from model_packager.unpack import unpack_verified  # noqa: E402

MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[bench-install] {msg}", file=sys.stderr, flush=True)


def big_onnx(path: Path, mib: float) -> Path:
    """input [N, 784] -> MatMul with a [784, K] weight of about ``mib`` MiB -> output [N, K]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = max(1, int(mib * MIB / (784 * 4)))
    w = np.random.default_rng(0).standard_normal((784, k)).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def cpu_now() -> float:
    """This process's CPU seconds plus its reaped children's (the signature check)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def before_path(pkg: Path, trust: TrustStore, dest: Path) -> None:
    """What the installer did before: verify (structure, signature, member digests), the
    whole-file digest, then extraction with digests again."""
    reader, _ = verify_package(pkg, trust)
    _ = reader.digest
    extract_package(reader, dest)


def after_path(pkg: Path, check: Callable[[bytes, bytes | None], str], dest: Path) -> None:
    unpacked = unpack_verified(pkg, check, dest.parent)
    os.replace(unpacked.staged, dest)


def measure_paths(pkg: Path, pub: Path, workdir: Path, reps: int) -> dict[str, Any]:
    trust = TrustStore.from_paths([pub])  # loaded once: the agent held it once too
    size_mib = pkg.stat().st_size / MIB
    runs: dict[str, list[float]] = {
        "before": [],
        "after": [],
        "after_in_process": [],
        "after_openssl": [],
    }
    paths: dict[str, Callable[[Path], None]] = {
        "before": lambda d: before_path(pkg, trust, d),
        "after": lambda d: after_path(pkg, lambda m, s: verify_in_child(m, s, [pub]), d),
        "after_in_process": lambda d: after_path(pkg, lambda m, s: verify_manifest(m, s, trust), d),
        "after_openssl": lambda d: after_path(
            pkg, lambda m, s: verify_without_cryptography(m, s, [pub]), d
        ),
    }
    for r in range(reps + 1):  # the first round warms the page cache and imports
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            dest = workdir / f"x-{name}-{r}" / "pkg"
            dest.parent.mkdir(parents=True)
            t0 = cpu_now()
            paths[name](dest)
            spent = cpu_now() - t0
            shutil.rmtree(dest.parent)
            if r:
                runs[name].append(spent)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "package_mib": size_mib,
        "cpu_s_per_mib_before": med["before"] / size_mib,
        "cpu_s_per_mib_after": med["after"] / size_mib,
        "cpu_s_before": med["before"],
        "cpu_s_after": med["after"],
        "cpu_s_after_in_process": med["after_in_process"],
        "cpu_s_per_mib_after_in_process": med["after_in_process"] / size_mib,
        "cpu_s_after_openssl": med["after_openssl"],
        "cpu_s_per_mib_after_openssl": med["after_openssl"] / size_mib,
        "ratio_openssl_before": med["after_openssl"] / med["before"],
        "ratio_after_before": med["after"] / med["before"],
        "ratio_in_process_before": med["after_in_process"] / med["before"],
        "runs": runs,
    }


def agent_server(
    tag: str, workdir: Path, pub: Path, src: Path | None, extra: dict[str, Any] | None = None
) -> Server:
    port_file = workdir / f"{tag}.port.json"
    config = {
        "data_dir": str(workdir / f"data-{tag}"),
        "grpc_port": 0,
        "http_port": -1,
        "metrics_port": -1,
        "port_file": str(port_file),
        "trusted_keys": [str(pub)],
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "log_level": "INFO",
        **(extra or {}),
    }
    cfg = workdir / f"{tag}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(src / "scripts")])}
    cmd = [*console_script("edge-agent"), "run", "--config", str(cfg)]
    return Server(tag, cmd, workdir, port_file, env)


def agent_cpu(server: Server) -> float:
    assert server.proc is not None
    t = psutil.Process(server.proc.pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def install(server: Server, pkg: Path) -> float:
    import grpc

    from protos.gen import agent_pb2, agent_pb2_grpc

    with grpc.insecure_channel(server.url) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        t0 = time.perf_counter()
        resp = stub.InstallPackage(
            agent_pb2.InstallPackageRequest(path=str(pkg), activate=True), timeout=600
        )
    if resp.result.outcome != "COMMITTED":
        raise RuntimeError(f"install failed: {resp.result}")
    return time.perf_counter() - t0


def serve_mlp(server: Server, n: int) -> None:
    import grpc

    from protos.gen import inference_pb2, inference_pb2_grpc

    x = np.zeros((1, 784), np.float32)
    req = inference_pb2.ModelInferRequest(
        model_name="mlp",
        inputs=[
            inference_pb2.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 784]
            )
        ],
        raw_input_contents=[x.tobytes()],
    )
    with grpc.insecure_channel(server.url) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        for _ in range(n):
            stub.ModelInfer(req, timeout=10)


def measure_agent(
    label: str, src: Path | None, workdir: Path, pub: Path, big: Path, mlp: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tag = label.replace(" ", "-")
    with agent_server(f"{tag}-big", workdir, pub, src).start() as server:
        time.sleep(0.5)  # let start-up settle before reading the CPU counter
        cpu0 = agent_cpu(server)
        out["big_install_wall_s"] = install(server, big)
        out["big_install_cpu_s"] = agent_cpu(server) - cpu0
        out["big_rss_after_install_mb"] = server.rss_mb()
    with agent_server(f"{tag}-mlp", workdir, pub, src).start() as server:
        out["mlp_rss_before_install_mb"] = server.rss_mb()
        install(server, mlp)
        out["mlp_rss_after_install_mb"] = server.rss_mb()
        serve_mlp(server, 500)
        out["mlp_rss_after_500_mb"] = server.rss_mb()
    return out


def import_cost(src: Path, reps: int) -> dict[str, float]:
    # RSS from psutil, not ru_maxrss: a forked child's maximum includes its parent's pages.
    code = (
        "import time; t=time.process_time(); import edge_agent.app; c=time.process_time()-t; "
        "import psutil; print(c, psutil.Process().memory_info().rss / 1024)"
    )
    cpu, rss = [], []
    for _ in range(reps):
        env = {**os.environ, "PYTHONPATH": str(src)}
        # cwd too: ``python -c`` puts the working directory first on sys.path, which would
        # shadow PYTHONPATH and measure whatever tree the benchmark was started from.
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=src,
            capture_output=True,
            text=True,
            check=True,
        )
        c, r = done.stdout.split()
        cpu.append(float(c))
        rss.append(float(r) / 1024)
    return {"import_cpu_s": statistics.median(cpu), "import_rss_mb": statistics.median(rss)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=float, default=20.0, help="size of the generated model")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each verify path")
    p.add_argument("--baseline-src", type=Path, help="also run the agent from this source tree")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--workdir", type=Path, help="keep the files here")
    a = p.parse_args(argv)

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="bench-install-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"loadavg_start": os.getloadavg()}
    psutil.cpu_percent(None)
    try:
        generate_keypair(workdir / "bench.key", workdir / "bench.pub")
        pub, key = workdir / "bench.pub", load_private_key(workdir / "bench.key")
        model = big_onnx(workdir / "big.onnx", a.mib)
        spec = BuildSpec(name="big", version="1", artifacts=[ArtifactInput(model)])
        big = build_package(spec, workdir / "pkg", key)
        mlp_model = REPO / "tests" / ".models" / "mlp.onnx"
        if not mlp_model.exists():
            subprocess.run([str(REPO / "scripts" / "gen-test-models")], check=True)
        mlp_spec = BuildSpec(name="mlp", version="1", artifacts=[ArtifactInput(mlp_model)])
        mlp = build_package(mlp_spec, workdir / "pkg", key)
        log(f"package {big.stat().st_size / MIB:.1f} MiB; verify paths x{a.reps}")
        result["paths"] = measure_paths(big, pub, workdir, a.reps)
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if a.baseline_src is not None:
            trees.append(("baseline", a.baseline_src.resolve()))
        for label, src in trees:
            log(f"agent ({label}): install, RSS")
            result[f"agent {label}"] = measure_agent(label, src, workdir, pub, big, mlp)
            result[f"import {label}"] = import_cost(src or REPO, 3)
    except Exception as exc:  # a benchmark reports what it measured
        log(f"failed: {exc!r}")
    finally:
        result["machine_busy_pct"] = psutil.cpu_percent(None)
        result["loadavg_end"] = os.getloadavg()
        report(result)
        if a.json:
            a.json.write_text(json.dumps(result, indent=2, default=str))
        if a.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(r: dict[str, Any]) -> None:
    print("\nedge-agent install benchmark")
    print(
        f"  machine: {os.cpu_count()} CPUs; load average at start "
        f"{', '.join(f'{x:.1f}' for x in r['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in r['loadavg_end'])}; all CPUs busy "
        f"{r['machine_busy_pct']:.0f}% over the run"
    )
    if "paths" in r:
        p = r["paths"]
        print(f"\n  verify + extract a {p['package_mib']:.1f} MiB package (median CPU s)")
        print(
            f"    before (4 reads):                             {p['cpu_s_before']:.3f} s = "
            f"{p['cpu_s_per_mib_before'] * 1000:.2f} ms/MiB"
        )
        print(
            f"    one pass, signature through OpenSSL (ctypes): {p['cpu_s_after_openssl']:.3f} s = "
            f"{p['cpu_s_per_mib_after_openssl'] * 1000:.2f} ms/MiB  "
            f"({p['ratio_openssl_before']:.2f}x; the agent's default)"
        )
        print(
            f"    one pass, signature with cryptography here:   "
            f"{p['cpu_s_after_in_process']:.3f} s = "
            f"{p['cpu_s_per_mib_after_in_process'] * 1000:.2f} ms/MiB  "
            f"({p['ratio_in_process_before']:.2f}x; signature_check_in_child: false)"
        )
        print(
            f"    one pass, signature in a child process:       {p['cpu_s_after']:.3f} s = "
            f"{p['cpu_s_per_mib_after'] * 1000:.2f} ms/MiB  ({p['ratio_after_before']:.2f}x; "
            "the fallback without a usable libcrypto)"
        )
    for key in [k for k in r if k.startswith("agent ")]:
        g = r[key]
        print(f"\n  {key}")
        print(
            f"    whole install of the {r['paths']['package_mib']:.1f} MiB package: "
            f"{g['big_install_cpu_s']:.3f} CPU s ({g['big_install_wall_s']:.2f} s wall), "
            f"RSS after {g['big_rss_after_install_mb']:.1f} MB"
        )
        print(
            f"    MLP: RSS {g['mlp_rss_before_install_mb']:.1f} MB at start, "
            f"{g['mlp_rss_after_install_mb']:.1f} MB right after the install (goal <= 100), "
            f"{g['mlp_rss_after_500_mb']:.1f} MB after 500 requests (goal <= 90)"
        )
    for key in [k for k in r if k.startswith("import ")]:
        g = r[key]
        print(
            f"  {key}: edge_agent.app imports in {g['import_cpu_s']:.3f} CPU s, "
            f"RSS then {g['import_rss_mb']:.1f} MB"
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
