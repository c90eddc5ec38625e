"""Staged rollout benchmark (``scripts/bench-rollout --stages``): edge services on real agents.

The stack of ``bench_rollout.py`` (``fleet_stack``): Mosquitto, ``control-plane serve`` on a
SQLite file, N real ``edge-agent run`` processes (default 20) registered with a label. Three
phases, in one run:

1. **All at once (the baseline).** Version 1, a small real ONNX model, deployed to every device
   with one ``POST /deployments``; measured from the call until the API shows every target
   installed.
2. **Staged, good version.** An edge service rolls version 2 (same size) out to the same devices
   in 3 stages (canary 1, waves 50% and 100%) with a bake time of ``--bake`` seconds per stage;
   measured from ``POST /services`` until the rollout is ``succeeded``, minus 3 bake times.
   Target: <= 2x the all-at-once figure.
3. **Breach.** While a load generator sends single-row requests to every device, version 3 is
   rolled out: it passes its golden vectors (two rows) but fails every single-row request. The
   canary's error-rate gate fails and the canary is rolled back (re-activation of version 2,
   which it still holds). Measured on the client side: from the canary's first failed request
   to its first successful one after that. Target: <= 5 s. This includes the agents' telemetry
   interval (``--telemetry``), the engine's tick (``--tick``) and the MQTT round trips.

Figures are printed next to the machine's load in the same phase. Always exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fleet_stack import (  # noqa: E402
    Machine,
    Stack,
    build_signed,
    log,
    register,
    start_agents,
    start_broker,
    start_control_plane,
    stop_agents,
    upload,
    wait_credentials,
    wait_online,
)
from script_support import wait_until  # noqa: E402

DIM = 256


def make_model(path: Path, seed: int, two_rows_only: bool) -> Path:
    """y = x @ W on [batch, DIM]; with ``two_rows_only`` a Reshape to exactly two rows first."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((DIM, 16), dtype=np.float32)
    nodes, inits, x = [], [numpy_helper.from_array(w, "w")], "x"
    if two_rows_only:
        inits.append(numpy_helper.from_array(np.array([2, DIM], np.int64), "two"))
        nodes.append(helper.make_node("Reshape", ["x", "two"], ["x2"]))
        x = "x2"
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def one_row(address: str) -> bool:
    import numpy as np
    import tritonclient.grpc as tc
    import tritonclient.utils as tu

    client = tc.InferenceServerClient(url=address)
    try:
        inp = tc.InferInput("x", [1, DIM], "FP32")
        inp.set_data_from_numpy(np.ones((1, DIM), np.float32))
        client.infer("bench", [inp], client_timeout=10)
        return True
    except tu.InferenceServerException:
        return False
    finally:
        client.close()


class Load:
    """Single-row requests, one client thread per device (each device has its own traffic, as
    in a fleet); records the canary's outcomes over time."""

    def __init__(self, addresses: list[str], canary: str) -> None:
        self.addresses, self.canary = addresses, canary
        self.canary_results: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(a,), daemon=True) for a in addresses
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self, address: str) -> None:
        while not self.stop.is_set():
            ok = one_row(address)
            if address == self.canary:
                self.canary_results.append((time.monotonic(), ok))
            self.stop.wait(0.02)

    def breach_to_recovery(self) -> float | None:
        first_fail = next((t for t, ok in self.canary_results if not ok), None)
        if first_fail is None:
            return None
        back = next((t for t, ok in self.canary_results if ok and t > first_fail), None)
        return None if back is None else back - first_fail


class Phase:
    """Wall time of a phase, what the machine did, and what this run's processes did in it."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.procs = []
        for pid in [os.getpid(), *pids]:
            with contextlib.suppress(psutil.Error):
                self.procs.append(psutil.Process(pid))
        self.t0, self.cpu0, self.ours0 = time.monotonic(), psutil.cpu_times(), self._ours()

    def _ours(self) -> float:
        import psutil

        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def machine(self) -> Machine:
        import psutil

        cpu = psutil.cpu_times()
        busy = sum(
            getattr(cpu, f) - getattr(self.cpu0, f)
            for f in ("user", "system", "nice", "irq", "softirq")
        )
        return Machine(
            wall_s=time.monotonic() - self.t0, busy_s=busy, ours_s=self._ours() - self.ours0
        )


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_packager.signing import generate_keypair

    key, pub = work / "signing.key", work / "signing.pub"
    generate_keypair(key, pub)
    pkgs = {}
    for version, seed, bad in (("1", 1, False), ("2", 2, False), ("3", 3, True)):
        model = make_model(work / f"bench-{version}.onnx", seed, bad)
        pkgs[version] = build_signed(model, "bench", version, key, work)
    stack = Stack.on_free_ports(
        work,
        pub,
        cp_extra_env={"CONTROL_PLANE_ROLLOUT_TICK_S": str(args.tick)},
    )
    agents: list[Any] = []
    figures: dict[str, Any] = {"agents": args.agents, "bake_s": args.bake}
    try:
        start_broker(stack)
        start_control_plane(stack)
        bundles = []
        for i in range(args.agents):
            bundles.append(register(stack, f"st-{i:02d}", {"bench": "stages"}))
        wait_credentials(stack, bundles[-1])
        agents = start_agents(stack, bundles, {"telemetry_interval_s": args.telemetry})
        wait_online(stack, "stages", args.agents, 60)
        for v in pkgs.values():
            upload(stack, v)
        ids = [b["device_id"] for b in bundles]

        def pids() -> list[int]:
            procs = [stack.cp, stack.broker, *(a.proc for a in agents)]
            return [p.pid for p in procs if p is not None]

        log(f"phase 1: version 1 to {args.agents} devices at once")
        phase = Phase(pids())
        dep = stack.call(
            "POST",
            "/deployments",
            json={"package_name": "bench", "package_version": "1", "selector": {"bench": "stages"}},
        )

        def all_installed() -> bool:
            targets = stack.call("GET", f"/deployments/{dep['id']}")["targets"]
            return all(t["state"] == "installed" for t in targets)

        wait_until("all-at-once deployment", all_installed, args.timeout, 0.1)
        figures["all_at_once_s"] = round(phase.machine().wall_s, 2)
        figures["all_at_once_machine"] = str(phase.machine())

        log("phase 2: version 2 in 3 stages")
        phase = Phase(pids())
        stack.call(
            "POST",
            "/services",
            json={
                "name": "bench",
                "type": "edge",
                "models": [{"model": "bench", "version": "2"}],
                "targets": {"device_ids": ids},
                "strategy": {"canary": 1, "waves": ["50%", "100%"], "bake_s": args.bake},
                "gates": {"max_error_rate": 0.05},
            },
        )

        def rollout_done() -> dict[str, Any] | None:
            r = stack.call("GET", "/services/bench")["rollout"]
            return r if r["state"] != "running" else None

        rollout = wait_until("staged rollout", rollout_done, args.timeout + 3 * args.bake, 0.1)
        total = phase.machine().wall_s
        figures["staged_state"] = rollout["state"]
        figures["staged_total_s"] = round(total, 2)
        figures["staged_minus_bake_s"] = round(total - 3 * args.bake, 2)
        figures["staged_ratio"] = round(
            figures["staged_minus_bake_s"] / figures["all_at_once_s"], 2
        )
        figures["staged_machine"] = str(phase.machine())

        log("phase 3: version 3 (fails on single rows) under load")
        addresses = [a.grpc_address for a in agents]
        canary = addresses[ids.index(sorted(ids)[0])]
        load = Load(addresses, canary)
        load.start()
        time.sleep(1.0)
        phase = Phase(pids())
        stack.call(
            "PATCH", "/services/bench", json={"models": [{"model": "bench", "version": "3"}]}
        )
        failed = wait_until("gate breach", rollout_done, args.timeout + args.bake * 3, 0.1)

        def recovered() -> bool:
            return load.breach_to_recovery() is not None

        wait_until("canary serving again", recovered, 30, 0.1)
        load.join()
        figures["breach_state"] = failed["state"]
        figures["breach_reason"] = failed["reason"]
        figures["breach_to_previous_s"] = round(load.breach_to_recovery() or -1.0, 2)
        figures["breach_machine"] = str(phase.machine())
    finally:
        stop_agents(agents, stack.ledger)
        stack.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--bake", type=float, default=5.0, help="bake time per stage, seconds")
    parser.add_argument("--telemetry", type=float, default=1.0, help="agent telemetry interval")
    parser.add_argument("--tick", type=float, default=0.2, help="rollout engine tick, seconds")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        try:
            figures = run(args, Path(tmp))
        except Exception as exc:  # a benchmark reports, it does not fail
            print(f"bench-rollout --stages: {exc!r}")
            return 0
    ratio_ok = figures["staged_ratio"] <= 2.0
    breach_ok = 0 <= figures["breach_to_previous_s"] <= 5.0
    print()
    print(
        f"staged rollout, {figures['agents']} agents, bake {figures['bake_s']} s per stage, "
        f"engine tick {args.tick} s, agent telemetry every {args.telemetry} s"
    )
    print(f"  all at once:               {figures['all_at_once_s']:8.2f} s")
    print(f"    {figures['all_at_once_machine']}")
    print(
        f"  3 stages minus 3 bakes:    {figures['staged_minus_bake_s']:8.2f} s "
        f"= {figures['staged_ratio']:.2f}x all at once (target <= 2x) "
        f"{'PASS' if ratio_ok else 'FAIL'} [{figures['staged_state']}]"
    )
    print(f"    {figures['staged_machine']}")
    print(
        f"  breach -> canary on previous version: {figures['breach_to_previous_s']:.2f} s "
        f"(target <= 5 s) {'PASS' if breach_ok else 'FAIL'} [{figures['breach_state']}]"
    )
    print(f"    {figures['breach_reason']}")
    print(f"    {figures['breach_machine']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
