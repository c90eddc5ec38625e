"""Fleet soak: real agents, a real Mosquitto and ``control-plane serve`` under random faults.

The stack is the one ``scripts/bench-rollout`` measures (``fleet_stack``): Mosquitto with the
files ``control-plane broker-config`` writes (persistence on), the control plane as a process on a
SQLite file (so it can be kill -9'd and started again on the same data folder), and N agents as
``edge-agent run`` processes configured from their registration bundles. Agents start empty; the
first version of a small signed model (``soak``, a 4 MiB MatMul) is deployed to all of them and
must be installed before the faults start.

Then, for ``--minutes``, faults hit at random times drawn from ``--seed`` (each kind once early
on, so even a short run sees all of them, then at random), overlapping as they happen to:

* ``broker_restart``: Mosquitto stopped (SIGTERM, so it saves its persistence file; SIGKILL with
  ``--broker-crash``) and started again on the same port 1-4 s later;
* ``cp_kill``: the control plane SIGKILLed and started again 1-4 s later, same port and data;
* ``agent_kill``: an agent SIGKILLed and started again 0.5-3 s later on its data folder;
* ``flood``: a fake device (``fleet_flood.py``, its own registered credentials) given the latest
  version, flooding ~400 chunk requests a second and a 1 MiB TelemetryBatch a second for 8-15 s;
* ``supersede``: version n deployed to every agent, then n+1 as soon as one reports chunks of n
  on disk (mid-transfer), before n finishes;

while ordinary deployments of new versions (to every agent, to one label group, to one device)
keep the fleet busy. No version is ever deployed twice, so "the version a device serves" says
which deployment it acted on.

After the faults, everything is brought back (broker, control plane, agents; the flood stops)
and the fleet gets ``--settle`` seconds to converge. Then the invariants:

1. **versions**: every agent serves (``AgentService.ListModels`` over gRPC, version READY and
   active) the version of its one non-superseded deployment target, which is ``installed``;
2. **deployments final**: ``GET /deployments`` has no target left ``pending`` or
   ``in_progress``;
3. **telemetry exactly once**: for each agent, what its outbox (``data/fleet/outbox.sqlite3``)
   says it wrote against ``GET /devices/{id}/telemetry``: no sequence number stored twice, none
   above what was written, and every record neither still in the outbox nor counted as dropped
   by the device stored;
4. **oversized telemetry refused**: nothing of the flood device's 1 MiB batches is stored;
5. **processes**: nothing exited that was not killed on purpose, and once the soak stops them,
   every process it started (and every descendant seen under one) is gone (psutil).

The report counts each fault injected, the flood's own counters and what the control plane
counted against the flood device (``fleet.telemetry_batches_refused``,
``fleet.chunk_requests_dropped``: they restart at zero with the control plane, so they are
sampled at the end of each flood), and each invariant with PASS/FAIL. Exit status: 0 when all
hold, 1 on any violation, 2 when the soak could not run (set-up failure, interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import grpc  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from fleet_stack import (  # noqa: E402
    Agent,
    ReportedWatcher,
    Stack,
    build_signed,
    control_plane_healthy,
    kill_hard,
    log,
    make_onnx,
    register,
    spawn_control_plane,
    start_broker,
    stop_agents,
    stop_broker,
    upload,
    wait_credentials,
    write_agent_config,
)
from script_support import spawn_logged, stop_process, wait_until  # noqa: E402

from protos.gen import agent_pb2, agent_pb2_grpc  # noqa: E402

FAULTS = ("broker_restart", "cp_kill", "agent_kill", "flood", "supersede")
MODEL = "soak"
FLOOD_ID = "soak-flood"
FLOOD_SCRIPT = Path(__file__).resolve().parent / "fleet_flood.py"
#: Chunk size of the soak's control plane: a 4 MiB package is 64 chunks, so a transfer lasts long
#: enough to be superseded in the middle and to be cut by a fault.
CHUNK_SIZE = 64 * 1024
#: Agent settings for a run measured in minutes: quick reconnects (the default backoff reaches
#: 30 s), short chunk timeouts, frequent progress reports (how a transfer is seen in the middle)
#: and a metrics snapshot a second, so every agent writes telemetry all along.
AGENT_FLEET = {
    "reconnect_min_s": 0.2,
    "reconnect_max_s": 2.0,
    "chunk_timeout_s": 3.0,
    "progress_interval_s": 0.2,
    "telemetry_interval_s": 1.0,
}
FINAL_STATES = ("installed", "failed", "superseded")
API_ERRORS = (httpx.HTTPError, RuntimeError)


class Interrupted(Exception):
    """SIGTERM or SIGINT: stop, clean up, exit 2."""


# --- the plan -----------------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    due: float
    seq: int
    kind: str = field(compare=False)
    args: dict[str, Any] = field(compare=False, default_factory=dict)


def plan(
    rng: random.Random,
    seconds: float,
    mean_gap: float,
    deploy_gap: float,
    faults: tuple[str, ...] = FAULTS,
) -> list[Event]:
    """The faults and ordinary deployments of a run, as offsets from its start.

    Every fault kind once, in random order, within the first part of the run (so a short run
    still sees each), then faults at exponential gaps of mean ``mean_gap``; ordinary deployments
    every ``deploy_gap`` +- 50 %.
    """
    events: list[Event] = []
    seq = 0

    def add(at: float, kind: str) -> None:
        nonlocal seq
        events.append(Event(at, seq, kind))
        seq += 1

    first_window = max(5.0, min(0.6 * seconds, 8.0 * len(faults)))
    kinds = list(faults)
    rng.shuffle(kinds)
    starts = sorted(rng.uniform(1.0, first_window) for _ in kinds)
    for at, kind in zip(starts, kinds, strict=True):
        add(at, kind)
    t = first_window
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        if t >= seconds:
            break
        add(t, rng.choice(faults))
    t = rng.uniform(0.3, 1.0) * deploy_gap
    while t < seconds:
        add(t, "deploy")
        t += rng.uniform(0.5, 1.5) * deploy_gap
    return sorted(events)


# --- records ------------------------------------------------------------------------------------


@dataclass
class DeployRecord:
    at_s: float
    version: int
    target: dict[str, Any]
    purpose: str
    deployment_id: str = ""
    error: str = ""


@dataclass
class FloodEpisode:
    proc: subprocess.Popen[bytes]
    log: Path
    started_s: float
    deployment_id: str = ""
    cp_start_no: int = 0  # which control plane process counted at the flood's start
    counters_at_start: dict[str, int] | None = None
    counters_at_stop: dict[str, int] | None = None
    cp_restarted: bool = False

    def counted(self) -> dict[str, int]:
        """What the control plane counted against the flood device during this episode.

        Its counters start at zero with each control plane process and add up over floods: the
        difference when one process saw the whole episode, else what the last one counted (a
        lower bound, ``cp_restarted``).
        """
        stop = self.counters_at_stop or {}
        start = {} if self.cp_restarted else (self.counters_at_start or {})
        return {k: v - start.get(k, 0) for k, v in stop.items()}

    summary: dict[str, Any] | None = None


@dataclass
class Invariant:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


# --- the soak -----------------------------------------------------------------------------------


class Soak:
    """One run: the stack, the agents, the clock of events, and what was done and seen."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.stack: Stack | None = None
        self.agents: list[Agent] = []
        self.watcher: ReportedWatcher | None = None
        self.flood_bundle = work / "flood-bundle.json"
        self.floods: list[FloodEpisode] = []
        self.flood: FloodEpisode | None = None
        self.deploys: list[DeployRecord] = []
        self.injected: Counter[str] = Counter()
        self.supersedes: list[dict[str, Any]] = []
        self.unexpected_exits: list[str] = []
        self.timeline: list[str] = []
        self.packages: dict[int, Path] = {}
        self.digests: dict[int, str] = {}
        self.next_version = 1
        self.key = work / "keys" / "release.key"
        self.model: Path | None = None
        self.cp_up = False  # healthy and connected as far as we know
        self.cp_starting_since = 0.0
        self.cp_starts = 0
        self.down_agents: set[int] = set()  # killed on purpose, not started again yet
        self.t0 = time.monotonic()
        self._events: list[Event] = []
        self._seq = 10_000

    # --- helpers ----------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, msg: str) -> None:
        line = f"{self.now():7.1f}s {msg}"
        self.timeline.append(line)
        log(line)

    def push(self, delay: float, kind: str, **args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, Event(self.now() + delay, self._seq, kind, args))

    @property
    def st(self) -> Stack:
        assert self.stack is not None
        return self.stack

    def package(self, version: int) -> Path:
        """Version ``version`` of the model, built and signed on first use."""
        if version not in self.packages:
            assert self.model is not None
            self.packages[version] = build_signed(
                self.model, MODEL, str(version), self.key, self.work / "packages"
            )
        return self.packages[version]

    def digest(self, version: int) -> str:
        """The version's digest once uploaded (uploads are idempotent: a retry is harmless)."""
        if version not in self.digests:
            self.digests[version] = str(upload(self.st, self.package(version))["digest"])
        return self.digests[version]

    def deploy(self, target: dict[str, Any], purpose: str) -> DeployRecord:
        """Upload the next version and deploy it; an error is recorded, not raised.

        The version number is used up either way: a deployment whose call failed may still
        exist, and a version is never deployed twice.
        """
        version = self.next_version
        self.next_version += 1
        rec = DeployRecord(self.now(), version, target, purpose)
        try:
            body = {"package_digest": self.digest(version), **target}
            rec.deployment_id = str(self.st.call("POST", "/deployments", json=body)["id"])
        except API_ERRORS as exc:
            rec.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.deploys.append(rec)
        what = rec.deployment_id or f"FAILED CALL ({rec.error})"
        self.note(f"deploy {MODEL} {version} to {target} ({purpose}): {what}")
        return rec

    def agent_labels(self, i: int) -> dict[str, str]:
        return {"soak": "agent", "group": "a" if i % 2 == 0 else "b"}

    # --- set-up -----------------------------------------------------------------------------

    def setup(self) -> None:
        from model_packager.signing import generate_keypair

        args = self.args
        generate_keypair(self.key, self.key.with_suffix(".pub"))
        (self.work / "packages").mkdir()
        in_dim = 1024
        out_dim = max(1, (args.package_mib << 20) // (4 * in_dim))
        self.model = make_onnx(self.work / "soak.onnx", in_dim, out_dim, seed=args.seed or 0)
        self.stack = Stack.on_free_ports(
            self.work,
            self.key.with_suffix(".pub"),
            cp_extra_env={"CONTROL_PLANE_CHUNK_SIZE": str(CHUNK_SIZE)},
            api_timeout=30.0,
        )
        start_broker(self.st)
        self.start_cp(wait=True)
        bundles = [
            register(self.st, f"soak-{i:02d}", self.agent_labels(i)) for i in range(args.agents)
        ]
        flood = register(self.st, FLOOD_ID, {"soak": "flood"})
        self.flood_bundle.write_text(json.dumps(flood))
        wait_credentials(self.st, flood)
        fleet = {**AGENT_FLEET, "telemetry_interval_s": args.telemetry_interval}
        self.agents = [write_agent_config(self.st, b, fleet) for b in bundles]
        for a in self.agents:
            a.spawn(self.st.ledger)
        wait_until(
            f"{len(self.agents)} agents serving",
            lambda: all([a.serving() for a in self.agents]),
            60 + 5 * len(self.agents),
            0.2,
        )
        self.watcher = ReportedWatcher(self.st)
        rec = self.deploy({"selector": {"soak": "agent"}}, "initial")
        if not rec.deployment_id:
            raise RuntimeError(f"initial deployment: {rec.error}")
        ids = {a.device_id for a in self.agents}
        wait_until(
            f"version 1 installed on {len(ids)} agents",
            lambda: ids <= set(self.watcher.final(rec.deployment_id)) if self.watcher else False,
            120,
            0.2,
        )
        failed = {
            d: e.reason
            for d, e in self.watcher.final(rec.deployment_id).items()
            if e.outcome != "INSTALLED"
        }
        if failed:
            raise RuntimeError(f"initial deployment failed on {failed}")
        self.note(f"set-up done: {len(self.agents)} agents serving {MODEL} 1")

    # --- control plane ----------------------------------------------------------------------

    def start_cp(self, wait: bool) -> None:
        spawn_control_plane(self.st)
        self.cp_up = False
        self.cp_starting_since = self.now()
        self.cp_starts += 1
        if wait:
            wait_until("control plane healthy and connected", self.cp_healthy, 90, 0.2)

    def cp_healthy(self) -> bool:
        """Serving and connected to the broker (remembered in ``cp_up``)."""
        self.cp_up = control_plane_healthy(self.st)
        return self.cp_up

    # --- event handlers ---------------------------------------------------------------------

    def on_broker_restart(self, ev: Event) -> None:
        if self.st.broker is None:
            self.push(1.0, ev.kind)
            return
        if self.args.broker_crash:
            kill_hard(self.st.broker, self.st.ledger)
            self.st.broker = None
        else:
            stop_broker(self.st)
        self.injected[ev.kind] += 1
        down = self.rng.uniform(1.0, 4.0)
        how = "SIGKILLed" if self.args.broker_crash else "stopped"
        self.note(f"FAULT broker_restart: mosquitto {how}, back in {down:.1f} s")
        self.push(down, "broker_start")

    def on_broker_start(self, _ev: Event) -> None:
        start_broker(self.st)
        assert self.st.broker is not None
        self.note(f"mosquitto started again (pid {self.st.broker.pid})")

    def on_cp_kill(self, ev: Event) -> None:
        if self.st.cp is None or self.st.cp.poll() is not None or not self.cp_up:
            self.push(1.0, ev.kind)  # down or still starting: kill the next incarnation
            return
        kill_hard(self.st.cp, self.st.ledger)
        self.st.cp = None
        self.cp_up = False
        self.injected[ev.kind] += 1
        down = self.rng.uniform(1.0, 4.0)
        self.note(f"FAULT cp_kill: control plane SIGKILLed, back in {down:.1f} s")
        self.push(down, "cp_start")

    def on_cp_start(self, _ev: Event) -> None:
        self.start_cp(wait=False)
        assert self.st.cp is not None
        self.note(f"control plane started again (pid {self.st.cp.pid})")

    def on_agent_kill(self, ev: Event) -> None:
        up = [i for i, a in enumerate(self.agents) if a.running() and i not in self.down_agents]
        if not up:
            self.push(1.0, ev.kind)
            return
        i = self.rng.choice(up)
        kill_hard(self.agents[i].proc, self.st.ledger)
        self.down_agents.add(i)
        self.injected[ev.kind] += 1
        down = self.rng.uniform(0.5, 3.0)
        self.note(f"FAULT agent_kill: {self.agents[i].device_id} SIGKILLed, back in {down:.1f} s")
        self.push(down, "agent_start", index=i)

    def on_agent_start(self, ev: Event) -> None:
        i = ev.args["index"]
        self.agents[i].spawn(self.st.ledger)
        self.down_agents.discard(i)
        self.note(f"{self.agents[i].device_id} started again")

    def on_flood(self, ev: Event) -> None:
        if self.flood is not None or not self.cp_up:
            self.push(1.0, ev.kind)
            return
        rec = self.deploy({"device_id": FLOOD_ID}, "flood device")
        episode = self.start_flood(rec.deployment_id)
        self.injected[ev.kind] += 1
        length = self.rng.uniform(8.0, 15.0)
        self.note(f"FAULT flood: pid {episode.proc.pid} for {length:.1f} s")
        self.push(length, "flood_stop")

    def start_flood(self, deployment_id: str) -> FloodEpisode:
        n = len(self.floods)
        log_path = self.work / f"flood-{n}.log"
        proc = spawn_logged(
            [
                sys.executable,
                str(FLOOD_SCRIPT),
                f"--bundle={self.flood_bundle}",
                f"--port={self.st.broker_port}",
                f"--rate={self.args.flood_rate}",
                "--telemetry-kib=1024",
                "--telemetry-per-s=1",
                "--final-timeout=30",
            ],
            log_path,
        )
        self.st.ledger.add(proc, f"flood device {n}")
        self.flood = FloodEpisode(
            proc,
            log_path,
            self.now(),
            deployment_id,
            cp_start_no=self.cp_starts,
            counters_at_start=self.fleet_counters(FLOOD_ID),
        )
        self.floods.append(self.flood)
        return self.flood

    def on_flood_stop(self, _ev: Event) -> None:
        """Sample what the control plane counted, then SIGTERM the flood device (which reports
        its deployment FAILED before it exits: reaped by ``flood_reap`` events)."""
        episode = self.flood
        if episode is None:
            return
        episode.counters_at_stop = self.fleet_counters(FLOOD_ID)
        episode.cp_restarted = self.cp_starts != episode.cp_start_no
        if episode.proc.poll() is None:
            episode.proc.send_signal(signal.SIGTERM)
        self.note(f"flood stopping; control plane counted {episode.counted()} during it")
        self.push(0.5, "flood_reap", deadline=self.now() + 60.0)

    def on_flood_reap(self, ev: Event) -> None:
        episode = self.flood
        if episode is None:
            return
        if episode.proc.poll() is None:
            if self.now() < ev.args["deadline"]:
                self.push(0.5, ev.kind, **ev.args)
                return
            kill_hard(episode.proc, self.st.ledger)
            self.unexpected_exits.append("flood device did not stop within 60 s of SIGTERM")
        episode.summary = _last_json_line(episode.log)
        self.flood = None
        self.note(f"flood stopped: {episode.summary}")

    def stop_flood_now(self) -> None:
        """The flood's stop and reaping, waited for here (after the faults)."""
        if self.flood is None:
            return
        self.on_flood_stop(Event(0.0, 0, "flood_stop"))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.flood.proc.wait(60)
        self.on_flood_reap(Event(0.0, 0, "flood_reap", {"deadline": 0.0}))

    def fleet_counters(self, device_id: str) -> dict[str, int] | None:
        if not self.cp_up:
            return None
        try:
            return dict(self.st.call("GET", f"/devices/{device_id}")["fleet"])
        except API_ERRORS:
            return None

    def on_supersede(self, ev: Event) -> None:
        if not self.cp_up:
            self.push(1.0, ev.kind)
            return
        rec = self.deploy({"selector": {"soak": "agent"}}, "supersede: first")
        self.push(
            0.05,
            "supersede_poll",
            first=rec.deployment_id,
            version=rec.version,
            since=self.now(),
            deadline=self.now() + 30.0,
        )

    def on_supersede_poll(self, ev: Event) -> None:
        """Deploy the next version once the first is seen mid-transfer (or it is too late: 30 s
        passed, a device finished it, or another deployment already superseded it)."""
        assert self.watcher is not None
        first = ev.args["first"]
        pulling = self.watcher.mid_transfer(first) if first else set()
        finished = set(self.watcher.final(first)) if first else set()
        overtaken = self.next_version > ev.args["version"] + 1
        late = self.now() >= ev.args["deadline"] or overtaken
        if not pulling and not late and first and not finished:
            self.push(0.05, ev.kind, **ev.args)
            return
        if not self.cp_up and not late:
            self.push(0.5, ev.kind, **ev.args)
            return
        rec = self.deploy({"selector": {"soak": "agent"}}, "supersede: second")
        self.injected["supersede"] += 1
        info = {
            "first_version": ev.args["version"],
            "second_version": rec.version,
            "after_s": round(self.now() - ev.args["since"], 2),
            "devices_mid_transfer": len(pulling),
            "devices_finished_first": len(finished),
            "overtaken": overtaken,
        }
        self.supersedes.append(info)
        self.note(f"FAULT supersede: {info}")

    def on_deploy(self, ev: Event) -> None:
        if not self.cp_up:
            self.push(1.0, ev.kind)
            return
        r = self.rng.random()
        if r < 0.5:
            target: dict[str, Any] = {"selector": {"soak": "agent"}}
        elif r < 0.8:
            target = {"selector": {"group": self.rng.choice("ab")}}
        else:
            target = {"device_id": self.rng.choice(self.agents).device_id}
        self.deploy(target, "ordinary")

    def on_health(self, _ev: Event) -> None:
        """Note processes that died without being killed, start them again; track the
        control plane's start-up."""
        st = self.st
        if st.broker is not None and st.broker.poll() is not None:
            self.unexpected_exits.append(f"mosquitto exited with {st.broker.returncode}")
            self.note("mosquitto exited on its own: started again")
            start_broker(st)
        if st.cp is not None:
            if st.cp.poll() is not None:
                self.unexpected_exits.append(f"control plane exited with {st.cp.returncode}")
                self.note("control plane exited on its own: started again")
                self.start_cp(wait=False)
            elif not self.cp_up:
                if self.cp_healthy():
                    self.note(
                        f"control plane healthy {self.now() - self.cp_starting_since:.1f} s "
                        "after its start"
                    )
                elif self.now() - self.cp_starting_since > 120 and st.broker is not None:
                    raise RuntimeError("control plane not healthy 120 s after its start")
        for i, a in enumerate(self.agents):
            if i not in self.down_agents and a.proc is not None and a.proc.poll() is not None:
                self.unexpected_exits.append(f"{a.device_id} exited with {a.proc.returncode}")
                self.note(f"{a.device_id} exited on its own ({a.proc.returncode}): started again")
                a.spawn(st.ledger)
        self.push(0.5, "health")

    # --- the run ----------------------------------------------------------------------------

    def run_faults(self) -> None:
        start = self.now()
        seconds = self.args.minutes * 60.0
        self._events = plan(
            self.rng, seconds, self.args.mean_gap, self.args.deploy_gap, self.args.faults
        )
        for ev in self._events:
            ev.due += start
        self.note(
            f"faults for {seconds:.0f} s: {Counter(e.kind for e in self._events)} planned "
            f"(seed {self.args.seed})"
        )
        handlers: dict[str, Callable[[Event], None]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")
        }
        self.push(0.5, "health")
        while self._events:
            ev = self._events[0]
            if ev.due > start + seconds and ev.kind in (*FAULTS, "deploy"):
                heapq.heappop(self._events)  # a fault postponed past the end: not injected
                continue
            if ev.due > start + seconds and ev.kind == "health":
                break
            wait = ev.due - self.now()
            if wait > 0:
                time.sleep(min(wait, 0.5))
                continue
            heapq.heappop(self._events)
            handlers[ev.kind](ev)
        self.note("faults over; bringing everything back")
        self.recover()

    def recover(self) -> None:
        """Bring back what is down (at once, not at its planned time), stop the flood, deploy
        the second version of a supersede still waiting, then wait until every agent serves."""
        pending = sorted(self._events)
        self._events = []
        if self.st.broker is None:
            start_broker(self.st)
        for ev in pending:
            if ev.kind == "agent_start":
                self.on_agent_start(ev)
        if self.st.cp is None or self.st.cp.poll() is not None:
            self.start_cp(wait=False)
        wait_until("control plane healthy after the faults", self.cp_healthy, 120, 0.2)
        for ev in pending:
            if ev.kind == "supersede_poll":
                ev.args["deadline"] = 0.0
                self.on_supersede_poll(ev)
        self.stop_flood_now()
        self._events = []
        wait_until(
            "every agent serving after the faults",
            lambda: all([a.serving() for a in self.agents]),
            120,
            0.2,
        )

    def settle(self) -> float:
        """Wait until the fleet has converged (or ``--settle`` runs out); its duration."""
        t = time.monotonic()

        def converged() -> bool:
            try:
                expected = self.expected_versions()
                return self.deployments_final()[0] and all(
                    self.active_version(a) == expected[a.device_id] for a in self.agents
                )
            except (*API_ERRORS, grpc.RpcError, KeyError, ValueError):
                return False

        try:
            wait_until("the fleet converging", converged, self.args.settle, 1.0)
        except TimeoutError:
            self.note(f"not converged within {self.args.settle:.0f} s; checking anyway")
        return time.monotonic() - t

    # --- what the fleet says ----------------------------------------------------------------

    def deployments(self) -> list[dict[str, Any]]:
        return list(self.st.call("GET", "/deployments"))

    def deployments_final(self) -> tuple[bool, dict[str, dict[str, int]], list[str]]:
        """(no target open, target states of the agents and of the flood device, open ones)."""
        states: dict[str, Counter[str]] = {"agents": Counter(), "flood device": Counter()}
        open_targets = []
        for d in self.deployments():
            for t in d["targets"]:
                who = "flood device" if t["device_id"] == FLOOD_ID else "agents"
                states[who][t["state"]] += 1
                if t["state"] not in FINAL_STATES:
                    open_targets.append(
                        f"{d['id']} v{d['package_version']} {t['device_id']}: {t['state']} "
                        f"{t['chunks_done']}/{t['chunks_total']}"
                    )
        return not open_targets, {k: dict(v) for k, v in states.items()}, open_targets

    def expected_versions(self) -> dict[str, str]:
        """Each agent's desired version per the control plane: its one live target's package."""
        live: dict[str, list[tuple[str, str]]] = {}
        for d in self.deployments():
            for t in d["targets"]:
                if t["state"] != "superseded":
                    live.setdefault(t["device_id"], []).append((d["package_version"], t["state"]))
        out = {}
        for a in self.agents:
            targets = live.get(a.device_id, [])
            if len(targets) != 1:
                raise ValueError(f"{a.device_id}: {len(targets)} live targets {targets}")
            out[a.device_id] = targets[0][0]
        return out

    def active_version(self, agent: Agent) -> str:
        """The version of ``soak`` the agent serves by default, READY; '' when none."""
        with grpc.insecure_channel(agent.grpc_address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            reply = stub.ListModels(agent_pb2.ListModelsRequest(), timeout=5)
        for m in reply.models:
            if m.name == MODEL:
                ready = {v.version for v in m.versions if v.state == "READY"}
                return m.active_version if m.active_version in ready else ""
        return ""

    # --- invariants -------------------------------------------------------------------------

    def check_versions(self) -> Invariant:
        expected = self.expected_versions()
        states = {}
        for d in self.deployments():
            for t in d["targets"]:
                if t["state"] != "superseded":
                    states[t["device_id"]] = (t["state"], t["reason"])
        bad = []
        rows = {}
        for a in self.agents:
            want = expected[a.device_id]
            try:
                got = self.active_version(a)
            except grpc.RpcError as exc:
                got = f"gRPC error {exc.code()}"
            state, reason = states[a.device_id]
            rows[a.device_id] = {"desired": want, "serving": got, "target": state}
            if got != want or state != "installed":
                bad.append(f"{a.device_id}: desired {want} ({state} {reason}), serves {got!r}")
        # The soak's own record agrees with the control plane where it knows the last call.
        last_call: dict[str, DeployRecord] = {}
        for rec in self.deploys:
            for a in self._targets_of(rec):
                last_call[a] = rec
        for device_id, want in expected.items():
            rec = last_call.get(device_id)
            if rec is not None and rec.deployment_id and str(rec.version) != want:
                bad.append(f"{device_id}: last deployment call was version {rec.version}")
        detail = (
            f"{len(expected) - len(bad)}/{len(expected)} agents serve their last desired version"
        )
        return Invariant("versions", not bad, detail + (f"; {bad}" if bad else ""), rows)

    def _targets_of(self, rec: DeployRecord) -> list[str]:
        if "device_id" in rec.target:
            return [rec.target["device_id"]]
        sel = rec.target["selector"]
        return [
            a.device_id
            for i, a in enumerate(self.agents)
            if all(self.agent_labels(i).get(k) == v for k, v in sel.items())
        ]

    def check_deployments(self) -> Invariant:
        ok, states, open_targets = self.deployments_final()
        n = len(self.deployments())
        return Invariant(
            "deployments final",
            ok,
            f"{n} deployments; targets by state: {states}"
            + (f"; not final: {open_targets}" if open_targets else ""),
            {"deployments": n, "states": states, "open": open_targets},
        )

    def check_telemetry(self) -> Invariant:
        """Outbox against storage, per agent; stops the agents (gracefully) on the way."""
        # 1. Delivered while running: the API catches up with what each outbox had written.
        written_before = {a.device_id: _outbox(a)[0] for a in self.agents}

        def caught_up() -> bool:
            return all(
                self.st.call("GET", f"/devices/{d}")["telemetry_seq"] >= w
                for d, w in written_before.items()
            )

        with contextlib.suppress(TimeoutError):  # the comparison below says what is missing
            wait_until("telemetry delivered", caught_up, 60, 0.5)
        # 2. Stop the agents, then compare what each wrote with what was stored.
        self.st.ledger.note_all_descendants()
        stop_agents(self.agents, self.st.ledger)
        bad: list[str] = []
        rows: dict[str, dict[str, int]] = {}
        totals: Counter[str] = Counter()
        for a in self.agents:
            written, pending, dropped = _outbox(a)
            acked = [s for s in range(1, written + 1) if s not in pending]
            high = max(acked, default=0)
            with contextlib.suppress(TimeoutError):
                wait_until(
                    f"{a.device_id} telemetry stored",
                    lambda d=a.device_id, h=high: (
                        self.st.call("GET", f"/devices/{d}")["telemetry_seq"] >= h
                    ),
                    30,
                    0.5,
                )
            stored = self.stored_seqs(a.device_id)
            seen = Counter(stored)
            dupes = sorted(s for s, n in seen.items() if n > 1)
            beyond = sorted(s for s in seen if s > written or s < 1)
            missing = sorted(set(acked) - set(seen))
            device = self.st.call("GET", f"/devices/{a.device_id}")
            row = {
                "written": written,
                "stored": len(stored),
                "pending_in_outbox": len(pending),
                "dropped_by_device": dropped,
                "dropped_reported": int(device["telemetry_dropped"]),
                "duplicates": len(dupes),
                "missing": len(missing),
            }
            rows[a.device_id] = row
            totals.update(row)
            if dupes or beyond or len(missing) > dropped or row["dropped_reported"] > dropped:
                bad.append(
                    f"{a.device_id}: duplicates {dupes[:10]}, beyond written {beyond[:10]}, "
                    f"missing {missing[:10]} ({len(missing)}, device dropped {dropped})"
                )
        detail = (
            f"{len(self.agents)} agents wrote {totals['written']} records: {totals['stored']} "
            f"stored, {totals['duplicates']} duplicates, {totals['missing']} missing, "
            f"{totals['pending_in_outbox']} still in outboxes at stop, "
            f"{totals['dropped_by_device']} dropped by devices"
        )
        return Invariant(
            "telemetry exactly once", not bad, detail + (f"; {bad}" if bad else ""), rows
        )

    def stored_seqs(self, device_id: str) -> list[int]:
        seqs: list[int] = []
        after = 0
        for _ in range(10_000):  # pages of 10000: bounded however long the soak ran
            page = self.st.call(
                "GET",
                f"/devices/{device_id}/telemetry",
                params={"after_seq": after, "limit": 10000},
            )
            if not page:
                break
            seqs += [int(r["seq"]) for r in page]
            after = seqs[-1]
        return seqs

    def check_flood_telemetry(self) -> Invariant:
        stored = self.stored_seqs(FLOOD_ID)
        sent = sum((e.summary or {}).get("telemetry_batches_sent", 0) for e in self.floods)
        refused = sum(e.counted().get("telemetry_batches_refused", 0) for e in self.floods)
        return Invariant(
            "oversized telemetry refused",
            not stored,
            f"{sent} batches of 1 MiB sent by the flood device, {len(stored)} records stored; "
            f"the control plane counted {refused} refused during the floods (a lower bound: its "
            f"counters restart with it, and batches still queued at a flood's end come later)",
            {"sent": sent, "stored": len(stored), "refused_counted": refused},
        )

    def flood_summary(self) -> dict[str, Any]:
        keys = ("requests_sent", "telemetry_batches_sent", "chunks_received", "chunks_verified")
        total: Counter[str] = Counter()
        rates = []
        counted: Counter[str] = Counter()
        for e in self.floods:
            s = e.summary or {}
            for k in keys:
                total[k] += int(s.get(k, 0))
            if s.get("request_rate"):
                rates.append(float(s["request_rate"]))
            counted.update(e.counted())
        return {
            "episodes": len(self.floods),
            **total,
            "request_rate_per_episode": rates,
            "counted_by_control_plane": dict(counted),
            "final_reports": [(e.summary or {}).get("final_report") for e in self.floods],
        }


# --- helpers ------------------------------------------------------------------------------------


def _outbox(agent: Agent) -> tuple[int, set[int], int]:
    """(records ever written, seqs still waiting in the outbox, records dropped) of an agent."""
    path = agent.workdir / "data" / "fleet" / "outbox.sqlite3"
    if not path.exists():
        return 0, set(), 0
    db = sqlite3.connect(path, timeout=10)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        pending = {int(r[0]) for r in db.execute("SELECT seq FROM records")}
    finally:
        db.close()
    return int(meta["next_seq"]) - 1, pending, int(meta["dropped"])


def _last_json_line(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                return None
    return None


def check_processes(soak: Soak) -> Invariant:
    """After everything was stopped: nothing started is alive, nothing exited unasked."""
    alive = soak.st.ledger.alive()
    children = psutil.Process().children(recursive=True)
    names = [f"{s.what} (pid {s.pid})" for s in alive] + [
        f"child pid {c.pid}" for c in children if all(c.pid != s.pid for s in alive)
    ]
    bad = bool(names or soak.unexpected_exits)
    started = len(soak.st.ledger.entries)
    return Invariant(
        "processes",
        not bad,
        f"{started} processes started (and descendants seen), {len(names)} alive at the end, "
        f"{len(soak.unexpected_exits)} exited unasked"
        + (f"; alive {names}" if names else "")
        + (f"; unexpected exits {soak.unexpected_exits}" if soak.unexpected_exits else ""),
        {"started": started, "alive": names, "unexpected_exits": soak.unexpected_exits},
    )


def shutdown(soak: Soak) -> None:
    """Stop everything this soak started, whatever state it is in (also after an error)."""
    if soak.stack is None:
        return
    soak.st.ledger.note_all_descendants()
    if soak.flood is not None:
        stop_process(soak.flood.proc, 10)
    for e in soak.floods:
        stop_process(e.proc, 5)
    stop_agents(soak.agents, soak.st.ledger)
    if soak.watcher is not None:
        soak.watcher.close()
    soak.st.close()


def print_report(result: dict[str, Any]) -> None:
    print("\n=== fleet soak report")
    a = result["args"]
    print(
        f"{a['agents']} agents, {a['minutes']} min of faults, seed {a['seed']}; settle "
        f"{result['settle_s']:.1f} s; {result['deployments_made']} deployment calls "
        f"({result['deployment_calls_failed']} failed calls); wall {result['wall_s']:.0f} s"
    )
    print("faults injected:")
    for kind in FAULTS:
        print(f"  {kind:16s} {result['faults'].get(kind, 0)}")
    for s in result["supersedes"]:
        print(f"    supersede: {s}")
    f = result["flood"]
    print(
        f"flood device: {f['episodes']} episodes, {f.get('requests_sent', 0)} chunk requests "
        f"(rates {f['request_rate_per_episode']}/s), {f.get('telemetry_batches_sent', 0)} "
        f"telemetry batches of 1 MiB, {f.get('chunks_received', 0)} chunks received; control "
        f"plane counted {f['counted_by_control_plane']}; final reports {f['final_reports']}"
    )
    print(f"agents' chunk requests dropped by the control plane: {result['agents_dropped']}")
    print("invariants:")
    for inv in result["invariants"]:
        print(f"  {'PASS' if inv['ok'] else 'FAIL'} {inv['name']}: {inv['detail']}")
    print(f"result: {'PASS' if result['ok'] else 'FAIL'}")


def checked(name: str, check: Callable[[], Invariant]) -> Invariant:
    """Run one invariant's check; a check that cannot complete is a violation, not a crash."""
    try:
        return check()
    except (*API_ERRORS, grpc.RpcError, KeyError, ValueError, OSError, sqlite3.Error) as exc:
        return Invariant(name, False, f"could not be checked: {type(exc).__name__}: {exc}")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    soak = Soak(args, work)
    invariants: list[Invariant] = []
    agents_dropped: dict[str, int] = {}
    settle_s = 0.0
    try:
        soak.setup()
        soak.run_faults()
        settle_s = soak.settle()
        invariants.append(checked("versions", soak.check_versions))
        invariants.append(checked("deployments final", soak.check_deployments))
        for a in soak.agents:
            counters = soak.fleet_counters(a.device_id) or {}
            agents_dropped[a.device_id] = counters.get("chunk_requests_dropped", 0)
        invariants.append(checked("telemetry exactly once", soak.check_telemetry))
        invariants.append(checked("oversized telemetry refused", soak.check_flood_telemetry))
    finally:
        # Cleaning up is not interrupted by a second Ctrl-C; every stop in it is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown(soak)
    invariants.append(check_processes(soak))
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ok": all(i.ok for i in invariants),
        "faults": {k: soak.injected.get(k, 0) for k in FAULTS},
        "supersedes": soak.supersedes,
        "flood": soak.flood_summary(),
        "agents_dropped": agents_dropped,
        "invariants": [asdict(i) for i in invariants],
        "deployments_made": len(soak.deploys),
        "deployment_calls_failed": sum(1 for d in soak.deploys if d.error),
        "settle_s": settle_s,
        "wall_s": time.monotonic() - t_start,
        "timeline": soak.timeline,
        "work": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fleet-soak", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--minutes", type=float, required=True, help="how long faults hit")
    parser.add_argument("--agents", type=int, default=10, help="edge-agent processes")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to converge after")
    parser.add_argument("--mean-gap", type=float, default=6.0, help="mean seconds between faults")
    parser.add_argument(
        "--deploy-gap", type=float, default=20.0, help="mean seconds between ordinary deployments"
    )
    parser.add_argument("--package-mib", type=int, default=4, help="size of the model package")
    parser.add_argument("--flood-rate", type=float, default=400.0, help="flood chunk requests/s")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated fault kinds to inject (default: all of {','.join(FAULTS)})",
    )
    parser.add_argument(
        "--telemetry-interval",
        type=float,
        default=AGENT_FLEET["telemetry_interval_s"],
        help="seconds between the agents' metrics snapshots (telemetry records)",
    )
    parser.add_argument(
        "--broker-crash",
        action="store_true",
        help="restart the broker with SIGKILL instead of SIGTERM (it saves no persistence file)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.minutes <= 0 or args.agents < 1:
        parser.error("--minutes must be > 0 and --agents >= 1")
    args.faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        parser.error(f"--faults: unknown {sorted(unknown)}; choose from {', '.join(FAULTS)}")

    def interrupted(_sig: int, _frame: object) -> None:
        raise Interrupted

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    print(
        f"fleet-soak: {args.agents} agents, {args.minutes} min of faults, seed {args.seed}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    try:
        result = run(args, work)
    except Interrupted:
        print(f"\nfleet-soak: interrupted; everything started was stopped; logs in {work}")
        return 2
    except Exception as exc:
        print(f"\nfleet-soak: could not complete: {type(exc).__name__}: {exc}; logs in {work}")
        return 2
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.keep or not result["ok"]:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
