"""``scripts/bench-download``: the agent's CPU per MiB from received chunks to an extracted,
verified package, this tree against another (``--baseline-src``), interleaved in one run.

What the fleet agent does with a package's chunks once they arrive (no MQTT here, so that only
this part is timed): check each chunk's sha256, store it (``ChunkDownload.write_chunk``),
assemble and check the whole file (``assemble``), then verify the signature and extract with
every member's digest (``model_packager.unpack.unpack_verified``, told the package digest where
the tree supports ``known_digest``). Before the hash-once download, assembly read every chunk back
to hash and copy the whole file, and the one pass hashed the whole file again; now the digest
comes from the chunks as they arrive and nothing is read back for it.

Each measurement is a fresh child process (``PYTHONPATH`` = the tree) timing its own CPU
(``time.process_time``) over that work on a generated ~20 MiB signed package (an ONNX model with
one large weight; nothing downloaded), chunks delivered in order and, separately, shuffled. The
figures are medians of ``--reps`` interleaved runs, printed as CPU seconds per MiB and as the
ratio to the baseline, with the machine's load. Always exits 0: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[bench-download] {msg}", file=sys.stderr, flush=True)


def child(args: argparse.Namespace) -> None:
    """Runs in the tree under test: chunks -> assembled file -> extracted, verified package."""
    from edge_agent.fleet.downloads import ChunkDownload
    from model_packager.signing import TrustStore, verify_manifest
    from model_packager.unpack import unpack_verified
    from protos.fleet_state import DesiredModel

    blob = Path(args.pkg).read_bytes()
    size = args.chunk_size
    pieces = [blob[i : i + size] for i in range(0, len(blob), size)]
    digest = hashlib.sha256(blob).hexdigest()
    model = DesiredModel(
        "dep",
        "bench",
        "1",
        digest,
        len(blob),
        size,
        len(pieces),
        tuple(hashlib.sha256(p).digest() for p in pieces),
    )
    trust = TrustStore.from_paths([Path(args.pub)])
    order = list(range(len(pieces)))
    if args.shuffled:
        random.Random(7).shuffle(order)
    work = Path(args.work)
    known = "known_digest" in inspect.signature(unpack_verified).parameters
    t0 = time.process_time()
    dl = ChunkDownload(work / "downloads", model)
    for i in order:
        if not dl.verify_chunk(i, pieces[i]):
            raise SystemExit(f"chunk {i} does not verify")
        dl.write_chunk(i, pieces[i])
    path = dl.assemble()
    extra: dict[str, Any] = {"known_digest": digest} if known else {}
    unpacked = unpack_verified(
        path, lambda m, s: verify_manifest(m, s, trust), work / "packages", **extra
    )
    spent = time.process_time() - t0
    if unpacked.digest != digest:
        raise SystemExit("digest mismatch")
    print(json.dumps({"cpu_s": spent, "known_digest": known}))


def run_child(src: Path, pkg: Path, pub: Path, chunk_size: int, shuffled: bool) -> float:
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, __file__, "child", f"--pkg={pkg}", f"--pub={pub}"]
        cmd += [f"--chunk-size={chunk_size}", f"--work={work}"] + (
            ["--shuffled"] if shuffled else []
        )
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{src}: {done.stderr.strip()[-2000:]}")
        return float(json.loads(done.stdout.strip().splitlines()[-1])["cpu_s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-download", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("child")
    c.add_argument("--pkg", required=True)
    c.add_argument("--pub", required=True)
    c.add_argument("--chunk-size", type=int, required=True)
    c.add_argument("--work", required=True)
    c.add_argument("--shuffled", action="store_true")
    p.add_argument("--mib", type=float, default=20.0, help="size of the generated model")
    p.add_argument("--reps", type=int, default=5, help="interleaved runs per tree and order")
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    p.add_argument("--baseline-src", type=Path, help="the tree to compare with (e.g. main)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.mode == "child":
        child(args)
        return 0
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_install import big_onnx

    from model_packager.build import ArtifactInput, BuildSpec, build_package
    from model_packager.signing import generate_keypair, load_private_key

    trees = {"this tree": REPO}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src.resolve(), **trees}
    load0 = os.getloadavg()[0]
    print(
        f"bench-download: {args.mib:g} MiB package, {args.chunk_size // 1024} KiB chunks, "
        f"{args.reps} runs per tree and order; {os.cpu_count()} CPUs, load average {load0:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        d = Path(tmp)
        generate_keypair(d / "k.key", d / "k.pub")
        model = big_onnx(d / "big.onnx", args.mib)
        spec = BuildSpec(name="big", version="1", artifacts=[ArtifactInput(path=model)])
        pkg = build_package(spec, d / "pkgs", load_private_key(d / "k.key"))
        mib = pkg.stat().st_size / MIB
        runs: dict[tuple[str, bool], list[float]] = {
            (t, s): [] for t in trees for s in (False, True)
        }
        for r in range(args.reps + 1):  # round 0 warms the page cache and is not counted
            keys = list(runs) if r % 2 == 0 else list(reversed(runs))
            for tree, shuffled in keys:
                spent = run_child(trees[tree], pkg, d / "k.pub", args.chunk_size, shuffled)
                if r:
                    runs[(tree, shuffled)].append(spent)
        load1 = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\npackage {mib:.2f} MiB; CPU seconds per MiB (median), chunks -> verified package:")
    for shuffled in (False, True):
        order = "shuffled" if shuffled else "in order"
        for tree in trees:
            per = med[(tree, shuffled)] / mib
            line = (
                f"  {order:9s} {tree:10s} {per * 1000:6.2f} ms/MiB ({med[(tree, shuffled)]:.3f} s)"
            )
            if "baseline" in trees and tree != "baseline":
                line += f"  = {med[(tree, shuffled)] / med[('baseline', shuffled)]:.2f}x baseline"
            print(line)
    print(f"machine load average {load0:.1f} at the start, {load1:.1f} at the end")
    if args.json:
        out = {f"{t}|{'shuffled' if s else 'in_order'}": v for (t, s), v in runs.items()}
        args.json.write_text(json.dumps({"package_mib": mib, "runs": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
