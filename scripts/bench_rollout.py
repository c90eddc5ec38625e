"""Fleet rollout benchmark: a signed package to real agents through a real Mosquitto, against a raw
MQTT broadcast of the same bytes, and 200 simulated devices reaching a new desired state.

Everything is real and started here, on loopback:

* Mosquitto on a free port, with ``mosquitto.conf``, ``passwd`` and ``acl`` written by
  ``control_plane.fleet.broker_config`` (the same code as ``control-plane broker-config``);
* the control plane as a subprocess, ``control-plane serve``, with a SQLite file, connected to
  that Mosquitto with its own identity, rewriting ``passwd``/``acl`` and HUPing Mosquitto at every
  registration (as in production);
* devices registered over the REST API; their config bundles turned into agent configs by
  ``edge_agent.fleet.bundle.config_from_bundle`` (what ``edge-agent join`` runs).

Part 1, rollout. N agents (default 20) run as full ``edge-agent run`` processes, gRPC on free
ports, so the whole device path runs as shipped: FleetClient pulls the package in chunks (window
and request size as configured by default), checks each chunk's sha256 and writes it atomically,
assembles and checks the whole file, then the Installer verifies the Ed25519 signature and every
digest, stages, loads the ONNX model in onnxruntime, runs the golden self-test, activates and
commits. Why processes rather than many FleetClients in fewer processes: a device is one process
with its own GIL, and the work per device (hashing, writing, loading) is the same either way, so
20 processes is both the honest picture and the one that lets both cores work; the cost is start-up
time and about 150 MB of memory per agent, which this machine has. The package is a real ONNX model
with one ~N MiB initializer (random weights, so nothing compresses), built and signed with
model_packager. Measured: from the ``POST /deployments`` call to the last of the N devices
publishing a ReportedState whose ``last_result`` is INSTALLED for that deployment (read on the
reported-state topic by an observer with an identity of its own, declared in the broker's
``passwd.local``/``acl.local``: the control plane's identity is bound to the control plane's own
session; confirmed on the API afterwards).

In the same run, through the same broker, with the agents idle: the package's bytes, cut into
the control plane's chunk size, are published once with QoS 1 to one topic that N plain paho
subscribers (N processes) read with QoS 1 (each of them, and the publisher, a local identity
allowed only that topic). Measured: first publish to the last subscriber's last
message, once just before the rollout and once just after it; the reference is their mean, so a
machine whose other load changes during the run skews the comparison less (both are printed, with
what the whole machine was doing in each phase). Target: rollout <= 4x that raw broadcast.

Part 2, scale. M simulated devices (default 200; ``bench_rollout_peers.py sim``, a few processes)
hold real MQTT sessions with their own registered credentials, report state as the agent does
(agent codec), and on a new DesiredState report IN_PROGRESS, pull a one-chunk package over the
chunk protocol (chunk and package digests checked), and report INSTALLED. Measured: from the
deployment call until the API shows all M targets installed. Target: <= 60 s. The control plane
process's CPU and memory are sampled with psutil during that window.

With ``--baseline-src DIR`` (e.g. a checkout of the main branch), after the simulated devices the
control plane and the N agents are restarted from that source tree (``PYTHONPATH``) and the same
rollout is measured again with a second version of the package, followed by a third raw broadcast:
before and after in one run, each against the raw broadcasts of the same run.

Figures of the rollout: call -> all N agents holding the verified package (their IN_PROGRESS
report at step ``install``) against the raw broadcast (target <= 3x); the agents' CPU seconds per
agent for the whole install (pull, hashing, verify, stage, load, self-test, commit), scaled to
20 MiB (target <= 0.25); call -> all INSTALLED against the raw broadcast (target <= 4x).

The benchmark always exits 0 (it is a benchmark, not a test); the table says PASS or FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fleet_stack import (  # noqa: E402
    Agent,
    Machine,
    ReportedWatcher,
    Sampler,
    Stack,
    Usage,
    build_signed,
    fmt_usage,
    log,
    make_onnx,
    mqtt_client,
    start_agents,
    start_broker,
    start_control_plane,
    stop_agents,
    wait_credentials,
    wait_online,
)
from script_support import run_in_work_folder, stop_process, verdict, wait_until  # noqa: E402

from protos import fleet_topics  # noqa: E402

PEERS = Path(__file__).resolve().parent / "bench_rollout_peers.py"
ROLLOUT_TARGET_RATIO = 4.0
HELD_TARGET_RATIO = 3.0
AGENT_CPU_TARGET_S_PER_20MIB = 0.25
SIM_TARGET_S = 60.0
# Identities of the raw broadcast's clients (fleet_stack's local identities): the broker binds
# each client id to its user name, so none of them may share the control plane's identity.
RAW_PUBLISHER_USER = "bench-raw-publisher"
RAW_TOPIC = fleet_topics.device_topic("bench-raw", fleet_topics.CHUNKS_DATA)


def raw_subscriber_user(i: int) -> str:
    return f"bench-raw-{i:02d}"


def raw_identities(subscribers: int) -> dict[str, list[str]]:
    """The raw broadcast's publisher and subscribers, each with only what it uses."""
    rules = {RAW_PUBLISHER_USER: [f"write {RAW_TOPIC}"]}
    return rules | {raw_subscriber_user(i): [f"read {RAW_TOPIC}"] for i in range(subscribers)}


# --- the measurements ---------------------------------------------------------------------------


@dataclass
class RawResult:
    seconds: float
    subscribers: int
    messages: int
    bytes_each: int
    usage: dict[str, Usage] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)


def raw_broadcast(stack: Stack, data: bytes, chunk_size: int, subscribers: int) -> RawResult:
    """Publish ``data`` in ``chunk_size`` pieces once, QoS 1; N subscriber processes read it."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    topic = RAW_TOPIC
    env = {**os.environ, "BENCH_MQTT_PASSWORD": stack.local_password}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(PEERS),
                "raw-sub",
                f"--port={stack.broker_port}",
                f"--username={raw_subscriber_user(i)}",
                f"--client-id={raw_subscriber_user(i)}",
                f"--topic={topic}",
                f"--count={len(chunks)}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(subscribers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"raw subscriber: {line or 'exited'}")
        pub = mqtt_client(
            stack.broker_port, RAW_PUBLISHER_USER, stack.local_password, RAW_PUBLISHER_USER
        )
        assert stack.broker is not None
        sampler = Sampler(
            {"mosquitto": [stack.broker.pid], "subscribers": [p.pid for p in procs]}
        ).start()
        t0 = time.time()
        for c in chunks:
            pub.publish(topic, c, qos=1)
        ends = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            if not line or line[0] != "done":
                raise RuntimeError(f"raw subscriber: {' '.join(line) or 'exited'}")
            ends.append(float(line[1]))
        usage = sampler.stop()
        pub.disconnect()
        pub.loop_stop()
    finally:
        for p in procs:
            stop_process(p, 5)
    return RawResult(max(ends) - t0, subscribers, len(chunks), len(data), usage, sampler.machine)


@dataclass
class RolloutResult:
    seconds: float
    first_s: float
    median_s: float
    downloaded_s: float
    installed: int
    failed: dict[str, str]
    api_summary: dict[str, int]
    usage: dict[str, Usage] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)


def rollout(
    stack: Stack,
    digest: str,
    agents: list[Agent],
    watcher: ReportedWatcher,
    timeout: float,
    also_sample: dict[str, list[int]] | None = None,
) -> RolloutResult:
    """Deploy ``digest`` to the agents (label ``bench=rollout``) and time it to all final.

    ``also_sample`` adds process groups to the CPU/RSS sampling (bench-flood's flood device).
    """
    assert stack.broker is not None and stack.cp is not None
    ids = {a.device_id for a in agents}
    sampler = Sampler(
        {
            "control plane": [stack.cp.pid],
            "mosquitto": [stack.broker.pid],
            "agents": [a.proc.pid for a in agents if a.proc is not None],
            **(also_sample or {}),
        }
    ).start()
    t0 = time.time()
    dep = stack.call(
        "POST", "/deployments", json={"package_digest": digest, "selector": {"bench": "rollout"}}
    )["id"]
    log(f"deployment {dep} created {time.time() - t0:.2f} s after the call")

    def all_final() -> bool:
        return ids <= set(watcher.final(dep))

    try:
        wait_until("all agents report a final result", all_final, timeout, 0.05)
    finally:
        usage = sampler.stop()
    final = watcher.final(dep)
    times = sorted(e.at - t0 for d, e in final.items() if e.outcome == "INSTALLED")
    failed = {d: e.reason for d, e in final.items() if e.outcome == "FAILED"}
    got = watcher.downloaded(dep)
    summary = wait_until(
        "the API shows every target final",
        lambda: (
            s
            if sum((s := stack.call("GET", f"/deployments/{dep}")["summary"]).values())
            == s.get("installed", 0) + s.get("failed", 0)
            else None
        ),
        30,
        0.2,
    )
    return RolloutResult(
        seconds=max(e.at for e in final.values()) - t0,
        first_s=times[0] if times else float("nan"),
        median_s=statistics.median(times) if times else float("nan"),
        downloaded_s=max(got.values()) - t0 if len(got) == len(ids) else float("nan"),
        installed=len(times),
        failed=failed,
        api_summary=summary,
        usage=usage,
        machine=sampler.machine,
    )


@dataclass
class SimResult:
    devices: int
    seconds: float
    device_view_s: float
    api_summary: dict[str, int]
    usage: dict[str, Usage] = field(default_factory=dict)
    cp_idle: dict[str, Usage] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)


@contextmanager
def sim_fleet(stack: Stack, bundles: list[dict[str, Any]], procs_n: int) -> Iterator[list[float]]:
    """Start the simulated devices; yields a list that fills with their INSTALLED times."""
    installed: list[float] = []
    procs: list[subprocess.Popen[str]] = []
    per = -(-len(bundles) // procs_n)
    try:
        for i in range(0, len(bundles), per):
            f = stack.work / f"sim-bundles-{i // per}.json"
            f.write_text(json.dumps(bundles[i : i + per]))
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(PEERS),
                        "sim",
                        f"--port={stack.broker_port}",
                        f"--bundles={f}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if not line.startswith("ready"):
                raise RuntimeError(f"simulated devices: {line or 'exited'}")

        def read(p: subprocess.Popen[str]) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                parts = line.split()
                if parts and parts[0] == "installed":
                    installed.append(float(parts[2]))
                elif parts and parts[0] == "error":
                    log(f"sim: {line.strip()}")

        for p in procs:
            threading.Thread(target=read, args=(p,), daemon=True).start()
        yield installed
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                stop_process(p, 5)


def simulate(stack: Stack, digest: str, bundles: list[dict[str, Any]], procs_n: int) -> SimResult:
    assert stack.cp is not None and stack.broker is not None
    n = len(bundles)
    with sim_fleet(stack, bundles, procs_n) as installed:
        wait_online(stack, "sim", n, 60)
        idle = Sampler({"control plane": [stack.cp.pid]}).start()
        time.sleep(2)
        cp_idle = idle.stop()
        sampler = Sampler(
            {"control plane": [stack.cp.pid], "mosquitto": [stack.broker.pid]}, interval=0.25
        ).start()
        t0 = time.time()
        dep = stack.call(
            "POST", "/deployments", json={"package_digest": digest, "selector": {"bench": "sim"}}
        )["id"]
        summary: dict[str, int] = {}

        def done() -> bool:
            nonlocal summary
            summary = stack.call("GET", f"/deployments/{dep}")["summary"]
            return summary.get("installed", 0) + summary.get("failed", 0) >= n

        try:
            wait_until(f"{n} simulated devices final on the API", done, 300, 0.25)
            seconds = time.time() - t0
        finally:
            usage = sampler.stop()
        device_view = (max(installed) - t0) if len(installed) >= n else float("nan")
    return SimResult(n, seconds, device_view, summary, usage, cp_idle, sampler.machine)


# --- report -------------------------------------------------------------------------------------


def print_report(
    args: argparse.Namespace,
    pkg_size: int,
    chunk_size: int,
    raws: list[RawResult],
    roll: RolloutResult,
    sim: SimResult | None,
    baseline: RolloutResult | None = None,
) -> None:
    raw = raws[0]
    raw_s = statistics.mean(r.seconds for r in raws)
    ratio = roll.seconds / raw_s
    roll_ok = roll.installed == args.agents and not roll.failed
    per_20 = 20 * 2**20 / pkg_size

    def agent_cpu(r: RolloutResult) -> float:
        return r.usage["agents"].cpu_s / args.agents * per_20

    held = roll.downloaded_s / raw_s
    rows = [
        ("measurement", "figure", "target", "result"),
        (
            f"raw QoS 1 broadcast, {raw.messages} x {chunk_size // 1024} KiB "
            f"to {raw.subscribers} subs (mean of {len(raws)})",
            f"{raw_s:.2f} s",
            "(reference)",
            "",
        ),
        (
            f"rollout {pkg_size / 2**20:.1f} MiB to {args.agents} agents, call -> all INSTALLED",
            f"{roll.seconds:.2f} s",
            "",
            "",
        ),
        (
            "rollout / raw broadcast",
            f"{ratio:.2f}x",
            f"<= {ROLLOUT_TARGET_RATIO:.0f}x",
            verdict(roll_ok and ratio <= ROLLOUT_TARGET_RATIO),
        ),
        (
            "call -> all agents hold the verified package / raw broadcast",
            f"{roll.downloaded_s:.2f} s = {held:.2f}x",
            f"<= {HELD_TARGET_RATIO:.0f}x",
            verdict(roll_ok and held <= HELD_TARGET_RATIO),
        ),
        (
            "agent CPU for the whole install, per agent per 20 MiB",
            f"{agent_cpu(roll):.2f} s",
            f"<= {AGENT_CPU_TARGET_S_PER_20MIB:.2f} s",
            verdict(agent_cpu(roll) <= AGENT_CPU_TARGET_S_PER_20MIB),
        ),
    ]
    if sim is not None:
        sim_ok = sim.api_summary.get("installed", 0) == sim.devices and sim.seconds <= SIM_TARGET_S
        cpu = sim.usage["control plane"]
        rows += [
            (
                f"{sim.devices} simulated devices, call -> all installed (API)",
                f"{sim.seconds:.2f} s",
                f"<= {SIM_TARGET_S:.0f} s",
                verdict(sim_ok),
            ),
            (
                "control plane CPU during it (mean / peak)",
                f"{cpu.cpu_mean_pct:.0f}% / {cpu.cpu_peak_pct:.0f}%",
                "(report)",
                "",
            ),
            (
                "control plane RSS during it (start / peak)",
                f"{cpu.rss_start_mb:.0f} / {cpu.rss_peak_mb:.0f} MB",
                "(report)",
                "",
            ),
        ]
    if baseline is not None:
        rows += [
            (
                f"baseline ({args.baseline_src}): call -> all INSTALLED",
                f"{baseline.seconds:.2f} s = {baseline.seconds / raw_s:.2f}x",
                "(before)",
                "",
            ),
            (
                "baseline: call -> all hold the verified package",
                f"{baseline.downloaded_s:.2f} s = {baseline.downloaded_s / raw_s:.2f}x",
                "(before)",
                "",
            ),
            (
                "baseline: agent CPU per agent per 20 MiB",
                f"{agent_cpu(baseline):.2f} s",
                "(before)",
                "",
            ),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    print("\n" + line)
    for i, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print(line)
    print(line)
    print("\ndetails:")
    print(
        f"  rollout: all {args.agents} held the checked package (IN_PROGRESS, step install) at "
        f"{roll.downloaded_s:.2f} s; INSTALLED first {roll.first_s:.2f} s, median "
        f"{roll.median_s:.2f} s, last {roll.seconds:.2f} s; {roll.installed} installed, "
        f"{len(roll.failed)} failed {roll.failed or ''}; API summary {roll.api_summary}"
    )
    floor = roll.machine.ours_s / roll.machine.cpus
    print(
        f"  rollout CPU floor: its processes needed {roll.machine.ours_s:.1f} core-s, so "
        f"{floor:.1f} s even with all {roll.machine.cpus} CPUs to themselves "
        f"({floor / raw_s:.1f}x the raw broadcast); on a fleet each device's share runs on "
        f"its own CPU"
    )
    for g, u in roll.usage.items():
        print(f"  rollout {g}: {fmt_usage(u)}")
    print(f"  rollout {roll.machine}")
    if baseline is not None:
        print(
            f"  baseline rollout: all held the package at {baseline.downloaded_s:.2f} s; "
            f"INSTALLED first {baseline.first_s:.2f} s, last {baseline.seconds:.2f} s; "
            f"{baseline.installed} installed, {len(baseline.failed)} failed"
        )
        for g, u in baseline.usage.items():
            print(f"  baseline rollout {g}: {fmt_usage(u)}")
        print(f"  baseline rollout {baseline.machine}")
    whens = ("before the rollout", "after the rollout", "after the baseline rollout")
    for when, r in zip(whens, raws, strict=False):
        print(f"  raw broadcast {when}: {r.seconds:.2f} s")
        for g, u in r.usage.items():
            print(f"    {g}: {fmt_usage(u)}")
        print(f"    {r.machine}")
    if sim is None:
        return
    print(
        f"  simulated devices: API view {sim.seconds:.2f} s, device view (last INSTALLED sent) "
        f"{sim.device_view_s:.2f} s; API summary {sim.api_summary}"
    )
    for g, u in sim.usage.items():
        print(f"  simulated rollout {g}: {fmt_usage(u)}")
    print(f"  simulated rollout {sim.machine}")
    idle = sim.cp_idle["control plane"]
    print(f"  control plane idle with {sim.devices} devices connected: {fmt_usage(idle)}")


# --- main ---------------------------------------------------------------------------------------


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
    big_model = make_onnx(work / "big.onnx", in_dim, out_dim, seed=1)
    big = build_signed(big_model, "bench-big", "1", keys / "release.key", pkgs)
    tiny = build_signed(
        make_onnx(work / "tiny.onnx", 4, 4, 2), "bench-tiny", "1", keys / "release.key", pkgs
    )
    big2 = build_signed(big_model, "bench-big", "2", keys / "release.key", pkgs)
    log(
        f"built and signed {big.name[:16]}... ({big.stat().st_size / 2**20:.2f} MiB, ONNX with "
        f"a {in_dim}x{out_dim} float32 initializer) and a tiny package in "
        f"{time.monotonic() - t:.1f} s"
    )

    stack = Stack.on_free_ports(
        work,
        keys / "release.pub",
    )
    stack.local_identities |= raw_identities(args.agents)
    agents: list[Agent] = []
    with ExitStack() as cleanup:
        cleanup.callback(stack.close)  # the control plane, then the broker
        start_broker(stack)
        assert stack.broker is not None
        log(f"mosquitto pid {stack.broker.pid} on 127.0.0.1:{stack.broker_port}")
        start_control_plane(stack)
        assert stack.cp is not None
        log(f"control-plane serve pid {stack.cp.pid} on 127.0.0.1:{stack.api_port}")

        t = time.monotonic()
        bundles_roll = [
            stack.call(
                "POST",
                "/devices",
                json={"device_id": f"agent-{i:03d}", "labels": {"bench": "rollout"}},
            )["bundle"]
            for i in range(args.agents)
        ]
        bundles_sim = [
            stack.call(
                "POST", "/devices", json={"device_id": f"sim-{i:04d}", "labels": {"bench": "sim"}}
            )["bundle"]
            for i in range(args.sims)
        ]
        wait_credentials(stack, (bundles_roll + bundles_sim)[-1])
        log(f"registered {args.agents + args.sims} devices in {time.monotonic() - t:.1f} s")
        with open(big, "rb") as f:
            pkg = stack.call("POST", "/packages", files={"file": (big.name, f)})
        with open(tiny, "rb") as f:
            tiny_pkg = stack.call("POST", "/packages", files={"file": (tiny.name, f)})
        chunk_size = int(pkg["chunk_size"])
        log(
            f"uploaded: {pkg['chunk_count']} chunks of {chunk_size} B; "
            f"tiny: {tiny_pkg['chunk_count']}"
        )

        watcher = ReportedWatcher(stack)
        cleanup.callback(watcher.close)
        t = time.monotonic()
        agents = start_agents(stack, bundles_roll)
        cleanup.callback(stop_agents, agents)
        wait_online(stack, "rollout", args.agents, 120)
        log(
            f"{args.agents} `edge-agent run` processes serving and online "
            f"in {time.monotonic() - t:.1f} s"
        )
        time.sleep(2)  # let start-up CPU settle before measuring

        data = big.read_bytes()
        log(f"raw broadcast: {len(data)} B to {args.agents} subscribers")
        raws = [raw_broadcast(stack, data, chunk_size, args.agents)]
        log(f"raw broadcast: {raws[0].seconds:.2f} s")
        time.sleep(1)

        log(f"rollout to {args.agents} agents")
        roll = rollout(stack, pkg["digest"], agents, watcher, args.timeout)
        log(f"rollout: {roll.seconds:.2f} s, {roll.installed} installed, {len(roll.failed)} failed")
        time.sleep(1)
        raws.append(raw_broadcast(stack, data, chunk_size, args.agents))
        log(f"raw broadcast again: {raws[1].seconds:.2f} s")
        stop_agents(agents)

        sim = None
        if args.sims:
            log(f"{args.sims} simulated devices")
            sim = simulate(stack, tiny_pkg["digest"], bundles_sim, args.sim_procs)
            log(f"simulated devices: {sim.seconds:.2f} s")

        baseline = None
        if args.baseline_src is not None:
            with open(big2, "rb") as f:
                pkg2 = stack.call("POST", "/packages", files={"file": (big2.name, f)})
            baseline = baseline_rollout(
                stack,
                args.baseline_src,
                pkg2["digest"],
                bundles_roll,
                agents,
                watcher,
                args.timeout,
            )
            log(f"baseline rollout: {baseline.seconds:.2f} s")
            time.sleep(1)
            raws.append(raw_broadcast(stack, data, chunk_size, args.agents))
            log(f"raw broadcast again: {raws[2].seconds:.2f} s")
            stop_agents(agents)

    print_report(args, big.stat().st_size, chunk_size, raws, roll, sim, baseline)
    return {
        "package_bytes": big.stat().st_size,
        "chunk_size": chunk_size,
        "agents": args.agents,
        "raw": [asdict(r) for r in raws],
        "rollout": asdict(roll),
        "ratio": roll.seconds / statistics.mean(r.seconds for r in raws),
        "sim": asdict(sim) if sim is not None else None,
        "baseline": asdict(baseline) if baseline is not None else None,
    }


@contextmanager
def source_tree(src: Path) -> Iterator[None]:
    """Children started meanwhile import the project from ``src`` (``PYTHONPATH``)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def baseline_rollout(
    stack: Stack,
    src: Path,
    digest: str,
    bundles: list[dict[str, Any]],
    agents: list[Agent],
    watcher: ReportedWatcher,
    timeout: float,
) -> RolloutResult:
    """Restart the control plane and the agents from ``src``, then the same rollout.

    ``agents`` (stopped) are started again on their folders, for the caller to stop."""
    log(f"restarting the control plane and the agents from {src}")
    stop_process(stack.cp, 15)
    with source_tree(src):
        start_control_plane(stack)
        for a in agents:  # the same folders, holding what the first rollout installed
            a.spawn(stack.ledger)
        wait_until(
            "agents serving", lambda: all([a.serving() for a in agents]), 60 + 5 * len(agents)
        )
    wait_online(stack, "rollout", len(bundles), 120)
    time.sleep(2)
    log(f"baseline rollout to {len(agents)} agents")
    return rollout(stack, digest, agents, watcher, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-rollout", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 agents, 5 MiB, 40 simulated devices"
    )
    parser.add_argument("--agents", type=int, help="agents (default 20)")
    parser.add_argument("--size-mib", type=int, help="package size in MiB (default 20)")
    parser.add_argument("--sims", type=int, help="simulated devices (default 200)")
    parser.add_argument(
        "--sim-procs", type=int, default=4, help="processes for the simulated devices"
    )
    parser.add_argument("--timeout", type=float, default=600, help="rollout timeout, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run the rollout with the control plane and agents from this source tree",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.agents = args.agents or (4 if quick else 20)
    args.size_mib = args.size_mib or (5 if quick else 20)
    args.sims = args.sims if args.sims is not None else (40 if quick else 200)
    print(
        f"bench-rollout: {args.agents} agents as full `edge-agent run` processes, one per device "
        f"as on a fleet (FleetClient + Installer: chunk pull and sha256, assembly, signature and "
        f"digest verify, stage, onnxruntime load, golden self-test, commit), a {args.size_mib} MiB "
        f"signed package; {args.sims} simulated devices (real MQTT sessions, pull a one-chunk "
        f"package, no inference) in {args.sim_procs} processes; Mosquitto and "
        f"`control-plane serve` (SQLite file) as subprocesses; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return run_in_work_folder("bench-rollout", run, args)


if __name__ == "__main__":
    sys.exit(main())
