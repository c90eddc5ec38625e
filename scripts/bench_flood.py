"""Flood benchmark: does one flooding device slow a rollout to the others?

The stack is bench-rollout's (``fleet_stack``): Mosquitto with the generated files, ``control-plane
serve`` on a SQLite file (default chunk size, 256 KiB), N ``edge-agent run`` processes (default 10)
configured from their bundles, plus one more registered device run by ``fleet_flood.py``: its own
credentials and topics, a 20 MiB package deployed to it so its requests are valid and served, and
while it floods, ~400 ``ChunkRequest`` a second (8 chunks each, cycling through that package) and
one 1 MiB ``TelemetryBatch`` a second (four times the accepted size, refused unread).

Measured, per round: a new version of a signed 20 MiB model (bench-rollout's MatMul) deployed to
the N agents, from the ``POST /deployments`` call to the last agent's ReportedState saying
INSTALLED (``bench_rollout.rollout``). Each round runs the rollout once without the flood and once
with it, the order alternating between rounds (A B, B A, ...) so a drift in the machine's other
load falls on both sides; the flood starts ~2 s before its rollout's deployment call (so it runs
at its full rate) and stops after it. Reported: every time, the medians, the ratio of the
medians (flood / no flood; target <= 1.2x), what the control plane counted against the flood
device and the agents (``fleet.chunk_requests_dropped``, ``fleet.telemetry_batches_refused``),
the flood device's own rates and CPU, and what the whole machine did during each rollout (busy
core-seconds, load average), since the benchmark shares 2 CPUs with whatever else runs.

Always exits 0 (a benchmark, not a test); the table says PASS or FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_rollout import RolloutResult, rollout  # noqa: E402
from fleet_stack import (  # noqa: E402
    Agent,
    ReportedWatcher,
    Stack,
    build_signed,
    fmt_usage,
    log,
    make_onnx,
    register,
    start_agents,
    start_broker,
    start_control_plane,
    stop_agents,
    upload,
    wait_credentials,
    wait_online,
)
from script_support import (  # noqa: E402
    interrupt_on_sigterm,
    run_in_work_folder,
    spawn_logged,
    stop_process,
    wait_until,
)

FLOOD_SCRIPT = Path(__file__).resolve().parent / "fleet_flood.py"
FLOOD_ID = "bench-flood"
TARGET_RATIO = 1.2
#: The flood runs this long before its rollout's deployment call, to be at its full rate.
FLOOD_LEAD_S = 2.0


@dataclass
class Round:
    index: int
    flood: bool
    rollout: RolloutResult
    flood_stats: dict[str, Any] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # against the flood device
    agents_dropped: int = 0  # chunk requests of the agents dropped during the rollout
    load_avg_1m: float = 0.0


def counters(stack: Stack, device_id: str) -> dict[str, int]:
    return dict(stack.call("GET", f"/devices/{device_id}")["fleet"])


def agents_dropped(stack: Stack, agents: list[Agent]) -> int:
    return sum(counters(stack, a.device_id)["chunk_requests_dropped"] for a in agents)


def start_flood(stack: Stack, args: argparse.Namespace, bundle: Path, n: int) -> Any:
    """The flood device process; returns once it said ready and ran ``FLOOD_LEAD_S``."""
    log_path = stack.work / f"flood-{n}.log"
    proc = spawn_logged(
        [
            sys.executable,
            str(FLOOD_SCRIPT),
            f"--bundle={bundle}",
            f"--port={stack.broker_port}",
            f"--rate={args.flood_rate}",
            f"--telemetry-kib={args.telemetry_kib}",
            f"--telemetry-per-s={args.telemetry_per_s}",
            "--final-timeout=10",
        ],
        log_path,
    )
    stack.ledger.add(proc, "flood device")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"flood device exited: {log_path.read_text()[-2000:]}")
        return "ready" in log_path.read_text(errors="replace")

    wait_until("flood device ready", ready, 30, 0.1)
    time.sleep(FLOOD_LEAD_S)
    return proc, log_path


def stop_flood(proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    """SIGTERM the flood device; its last output line is its counts (JSON)."""
    proc.send_signal(signal.SIGTERM)
    stop_process(proc, 30)
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    return {}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_packager.signing import generate_keypair

    log(f"work folder {work}")
    keys = work / "keys"
    generate_keypair(keys / "release.key", keys / "release.pub")
    pkgs = work / "packages"
    pkgs.mkdir()
    in_dim = 2048
    out_dim = max(1, (args.size_mib << 20) // (4 * in_dim))
    t = time.monotonic()
    model = make_onnx(work / "big.onnx", in_dim, out_dim, seed=1)
    # Version 0 for the flood device, then one new version per rollout (never one twice: an
    # agent that holds a version reports it installed at once).
    packages = [
        build_signed(model, "bench-big", str(v), keys / "release.key", pkgs)
        for v in range(2 * args.rounds + 1)
    ]
    log(
        f"built and signed {len(packages)} versions of a {packages[0].stat().st_size / 2**20:.1f}"
        f" MiB package in {time.monotonic() - t:.1f} s"
    )
    stack = Stack.on_free_ports(
        work,
        keys / "release.pub",
    )
    rounds: list[Round] = []
    with ExitStack() as cleanup:
        cleanup.callback(stack.close)
        start_broker(stack)
        start_control_plane(stack)
        bundles = [
            register(stack, f"agent-{i:03d}", {"bench": "rollout"}) for i in range(args.agents)
        ]
        flood_bundle = work / "flood-bundle.json"
        flood = register(stack, FLOOD_ID, {"bench": "flood"})
        flood_bundle.write_text(json.dumps(flood))
        wait_credentials(stack, flood)
        digests = [str(upload(stack, p)["digest"]) for p in packages]
        stack.call(
            "POST", "/deployments", json={"package_digest": digests[0], "device_id": FLOOD_ID}
        )
        log(f"registered {args.agents} agents and the flood device, {len(digests)} packages")

        watcher = ReportedWatcher(stack)
        cleanup.callback(watcher.close)
        agents = start_agents(stack, bundles)
        cleanup.callback(stop_agents, agents)
        wait_online(stack, "rollout", args.agents, 120)
        time.sleep(2)  # let start-up CPU settle before measuring

        version = 1
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for flooding in order:
                proc = None
                before = counters(stack, FLOOD_ID)
                dropped_before = agents_dropped(stack, agents)
                if flooding:
                    proc, flood_log = start_flood(stack, args, flood_bundle, len(rounds))
                    cleanup.callback(stop_process, proc, 10)
                sample = {"flood device": [proc.pid]} if proc is not None else None
                side = "WITH" if flooding else "without"
                log(f"round {r + 1}: rollout of version {version} {side} the flood")
                result = rollout(stack, digests[version], agents, watcher, args.timeout, sample)
                rnd = Round(r + 1, flooding, result, load_avg_1m=os.getloadavg()[0])
                rnd.agents_dropped = agents_dropped(stack, agents) - dropped_before
                if proc is not None:
                    after = counters(stack, FLOOD_ID)
                    rnd.counted = {k: after[k] - before.get(k, 0) for k in after}
                    rnd.flood_stats = stop_flood(proc, flood_log)
                log(
                    f"round {r + 1} {'flood' if flooding else 'no flood'}: {result.seconds:.2f} s, "
                    f"{result.installed} installed, {len(result.failed)} failed"
                    + (f"; control plane counted {rnd.counted}" if flooding else "")
                )
                rounds.append(rnd)
                version += 1
                time.sleep(2)
    print_report(args, rounds)
    plain = [r for r in rounds if not r.flood]
    flooded = [r for r in rounds if r.flood]
    med_plain = statistics.median(r.rollout.seconds for r in plain)
    med_flood = statistics.median(r.rollout.seconds for r in flooded)
    return {
        "agents": args.agents,
        "size_mib": args.size_mib,
        "rounds": [asdict(r) for r in rounds],
        "median_no_flood_s": med_plain,
        "median_flood_s": med_flood,
        "ratio": med_flood / med_plain,
    }


def print_report(args: argparse.Namespace, rounds: list[Round]) -> None:
    plain = [r for r in rounds if not r.flood]
    flooded = [r for r in rounds if r.flood]
    med_plain = statistics.median(r.rollout.seconds for r in plain)
    med_flood = statistics.median(r.rollout.seconds for r in flooded)
    ratio = med_flood / med_plain
    all_ok = all(r.rollout.installed == args.agents and not r.rollout.failed for r in rounds)
    print(f"\n=== bench-flood: {args.size_mib} MiB to {args.agents} agents, {args.rounds} rounds")
    print("round  flood  call -> all INSTALLED  machine during the rollout")
    for r in rounds:
        print(
            f"{r.index:5d}  {'yes' if r.flood else 'no ':5s}  {r.rollout.seconds:8.2f} s"
            f"             {r.rollout.machine}"
        )
    print(
        f"\nmedian without the flood {med_plain:.2f} s, with it {med_flood:.2f} s: ratio "
        f"{ratio:.2f}x (target <= {TARGET_RATIO}x): "
        f"{'PASS' if ratio <= TARGET_RATIO and all_ok else 'FAIL'}"
        + ("" if all_ok else " (not every agent installed every version)")
    )
    print("\ndetails:")
    for r in flooded:
        s = r.flood_stats
        print(
            f"  round {r.index} flood device: {s.get('requests_sent', 0)} chunk requests at "
            f"{s.get('request_rate', 0)}/s, {s.get('telemetry_batches_sent', 0)} telemetry batches "
            f"of {s.get('telemetry_bytes_each', 0) / 2**20:.2f} MiB, "
            f"{s.get('chunks_received', 0)} chunks served to it; the control plane counted "
            f"{r.counted}; agents' requests dropped: {r.agents_dropped}"
        )
    for r in rounds:
        for g, u in r.rollout.usage.items():
            print(f"  round {r.index} {'flood' if r.flood else 'no flood'} {g}: {fmt_usage(u)}")
    print(f"  load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-flood", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--agents", type=int, default=10, help="agents (default 10)")
    parser.add_argument("--size-mib", type=int, default=20, help="package size in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (no flood, flood)")
    parser.add_argument("--flood-rate", type=float, default=400.0, help="chunk requests/s")
    parser.add_argument("--telemetry-kib", type=int, default=1024, help="flood batch size, KiB")
    parser.add_argument("--telemetry-per-s", type=float, default=1.0, help="flood batches/s")
    parser.add_argument("--timeout", type=float, default=600, help="rollout timeout, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    print(
        f"bench-flood: {args.agents} `edge-agent run` processes, a {args.size_mib} MiB signed "
        f"package per rollout, {args.rounds} rounds of one rollout without and one with a device "
        f"flooding {args.flood_rate:.0f} chunk requests/s and {args.telemetry_per_s:g} telemetry "
        f"batch(es)/s of {args.telemetry_kib} KiB; Mosquitto and `control-plane serve` as "
        f"subprocesses; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    interrupt_on_sigterm()
    return run_in_work_folder("bench-flood", run, args)


if __name__ == "__main__":
    sys.exit(main())
