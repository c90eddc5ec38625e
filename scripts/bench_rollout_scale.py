"""Fleet scale benchmark (``scripts/bench-rollout --simulated N``): many simulated devices running
the agent's own reconcile code reach a new desired state, on SQLite and on PostgreSQL, with one
and with two control-plane replicas, in one run.

Each configuration gets a fresh stack, started as production runs it (``fleet_stack``): Mosquitto
with the generated ``mosquitto.conf``/``passwd``/``acl`` (every device's own credentials and ACL
block, rewritten and HUPed at every registration), ``control-plane serve`` as a subprocess on a
SQLite file or on a fresh database of a throwaway PostgreSQL cluster (``tests/pg.py``, fsync off),
and for the two-replica configuration a second ``serve`` (replica ids ``a``/``b``, MQTT shared
subscriptions). Then:

1. *registration*: N devices registered one by one over REST (as an operator's script would),
   timed per tenth so a cost that grows with the registry shows as a rising tail;
2. the devices (``bench_fleet_devices.py``, ``FleetClient`` with a stand-in installer) connect,
   spread over ``--sim-procs`` processes;
3. *rounds*: a deployment of a tiny signed package to all of them (version 1, then 2, ...), timed
   from the ``POST /deployments`` call until every device committed it (device view) and until
   the API's summary shows all N installed (API view), with the control plane's CPU seconds (per
   device) and peak RSS, Mosquitto's and the devices' CPU, and what the whole machine did.

Figures are printed as ratios to the SQLite single-replica run of the same size measured in the
same run (targets: all N reconciled <= 60 s, PostgreSQL <= 1.2x SQLite, two replicas >= 1.6x the
rate of one), with the load average: the machine is shared, so compare within a run.
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
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fleet_stack import (  # noqa: E402
    Machine,
    Sampler,
    Stack,
    Usage,
    build_signed,
    fmt_usage,
    log,
    make_onnx,
    start_broker,
    start_control_plane,
    wait_credentials,
)
from script_support import (  # noqa: E402
    api_client,
    console_script,
    free_port,
    run_in_work_folder,
    spawn_logged,
    stop_process,
    verdict,
    wait_until,
)

DEVICES = Path(__file__).resolve().parent / "bench_fleet_devices.py"
TARGET_S = 60.0
TARGET_PG_RATIO = 1.2
TARGET_REPLICA_SPEEDUP = 1.6
LABEL = {"bench": "scale"}
# paho's network loop waits with select(), which cannot watch a descriptor numbered 1024 or more,
# and each simulated device holds about six (its socket, paho's wake-up pair, the outbox's SQLite
# files): at most ~150 devices fit in one process. 100 leaves room.
DEVICES_PER_PROCESS = 100


@dataclass(frozen=True)
class Config:
    devices: int
    engine: str  # sqlite | postgres
    replicas: int = 1

    @property
    def tag(self) -> str:
        return f"{self.engine}-{self.devices}" + (f"-x{self.replicas}" if self.replicas > 1 else "")

    @property
    def title(self) -> str:
        more = f", {self.replicas} replicas" if self.replicas > 1 else ""
        engine = "PostgreSQL" if self.engine == "postgres" else "SQLite"
        return f"{self.devices} devices, {engine}{more}"


@dataclass
class Round:
    version: str
    device_s: float
    api_s: float
    create_s: float
    installed: int
    cp_cpu_s: float
    cp_cpu_per_device_ms: float
    cp_rss_peak_mb: float
    usage: dict[str, Usage] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)


@dataclass
class Result:
    config: Config
    register_s: float
    register_tenths_s: list[float]
    register_cp_cpu_s: float
    rounds: list[Round] = field(default_factory=list)

    @property
    def api_s(self) -> float:
        return statistics.median(r.api_s for r in self.rounds)

    @property
    def cpu_per_device_ms(self) -> float:
        return statistics.median(r.cp_cpu_per_device_ms for r in self.rounds)


# --- the stack of one configuration -------------------------------------------------------------


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int


@contextmanager
def env_var(name: str, value: str | None) -> Any:
    """``write_broker_files`` reads the settings from the environment, replica peers included."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def start_stack(cfg: Config, work: Path, trusted_pub: Path, database_url: str | None) -> Stack:
    stack = Stack.on_free_ports(
        work,
        trusted_pub,
    )
    if database_url:
        stack.cp_extra_env["CONTROL_PLANE_DATABASE_URL"] = database_url
    peers = (
        json.dumps([chr(ord("a") + i) for i in range(cfg.replicas)]) if cfg.replicas > 1 else None
    )
    if peers:
        stack.cp_extra_env["CONTROL_PLANE_REPLICA_PEERS"] = peers
        stack.cp_extra_env["CONTROL_PLANE_REPLICA_ID"] = "a"
        # Replicas share one store (an S3 bucket in production): any of them may be asked for
        # any package's chunks. One folder here, so the store's speed is not what is measured.
        stack.cp_extra_env["CONTROL_PLANE_BLOB_DIR"] = str(work / "shared-blobs")
    with env_var("CONTROL_PLANE_REPLICA_PEERS", peers):
        start_broker(stack)
    start_control_plane(stack)
    return stack


def start_more_replicas(cfg: Config, stack: Stack) -> list[Replica]:
    """Replicas b, c, ... on the same database and broker, each with its own port and folder."""
    out = []
    for i in range(1, cfg.replicas):
        rid = chr(ord("a") + i)
        port = free_port()
        env = stack.cp_env() | {
            "CONTROL_PLANE_REPLICA_ID": rid,
            "CONTROL_PLANE_PORT": str(port),
            "CONTROL_PLANE_DATA_DIR": str(stack.work / f"cp-{rid}"),
        }
        proc = spawn_logged(
            [*console_script("control-plane"), "serve"],
            stack.work / f"control-plane-{rid}.log",
            env=env,
        )
        stack.ledger.add(proc, f"replica {rid}")
        out.append(Replica(proc, port))
    for r in out:
        client, _ = api_client(f"http://127.0.0.1:{r.port}", stack.api_token)

        def healthy(c: Any = client, rep: Replica = r) -> bool:
            if rep.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {rep.proc.returncode}")
            try:
                return bool(c.get("/health", timeout=2).json().get("broker_connected"))
            except Exception:  # not up yet
                return False

        wait_until("second replica healthy", healthy, 90, 0.3)
        client.close()
    return out


def register_all(stack: Stack, n: int) -> tuple[list[dict[str, Any]], list[float], float]:
    """Register ``n`` devices one call each; the seconds each tenth took, and the CP's CPU."""
    assert stack.cp is not None
    sampler = Sampler({"control plane": [stack.cp.pid]}).start()
    bundles: list[dict[str, Any]] = []
    tenths: list[float] = []
    step = max(1, n // 10)
    t_last = time.perf_counter()
    for i in range(n):
        body = {"device_id": f"sim-{i:05d}", "labels": LABEL}
        bundles.append(stack.call("POST", "/devices", json=body)["bundle"])
        if (i + 1) % step == 0 or i + 1 == n:
            now = time.perf_counter()
            tenths.append(now - t_last)
            t_last = now
    usage = sampler.stop()
    wait_credentials(stack, bundles[-1])
    return bundles, tenths, usage["control plane"].cpu_s


# --- the devices --------------------------------------------------------------------------------


class Devices:
    """The device processes; ``installed`` fills with (device id, unix time) lines."""

    def __init__(self, stack: Stack, bundles: list[dict[str, Any]], procs_n: int) -> None:
        self.installed: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self.procs: list[subprocess.Popen[str]] = []
        per = -(-len(bundles) // procs_n)
        for i in range(0, len(bundles), per):
            f = stack.work / f"devices-{i // per}.json"
            f.write_text(json.dumps(bundles[i : i + per]))
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(DEVICES),
                        f"--bundles={f}",
                        f"--root={stack.work / 'devices'}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=open(stack.work / f"devices-{i // per}.log", "w"),  # noqa: SIM115
                    text=True,
                )
            )
            stack.ledger.add(self.procs[-1], "simulated devices")
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if not line.startswith("ready"):
                raise RuntimeError(f"simulated devices: {line or 'exited'}")
        for p in self.procs:
            threading.Thread(target=self._read, args=(p,), daemon=True).start()

    def _read(self, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            parts = line.split()
            if parts and parts[0] == "installed":
                with self._lock:
                    self.installed.append((parts[1], float(parts[2])))
            elif parts and parts[0] == "error":
                log(f"devices: {line.strip()}")

    def count_since(self, t0: float) -> tuple[int, float]:
        with self._lock:
            times = [t for _, t in self.installed if t >= t0]
        return len(times), max(times, default=float("nan"))

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(p, 5)


# --- one configuration --------------------------------------------------------------------------


def database_pids(postmaster: int | None) -> list[int]:
    """PostgreSQL's processes (the postmaster and its backends) right now; none for SQLite,
    which runs inside the control plane."""
    if postmaster is None:
        return []
    try:
        return [postmaster, *(c.pid for c in psutil.Process(postmaster).children())]
    except psutil.Error:
        return []


def deploy_round(
    stack: Stack,
    replicas: list[Replica],
    devices: Devices,
    digest: str,
    version: str,
    n: int,
    postmaster: int | None,
) -> Round:
    assert stack.cp is not None and stack.broker is not None
    cps = [stack.cp.pid, *(r.proc.pid for r in replicas)]
    groups = {f"control plane {chr(ord('a') + i)}": [pid] for i, pid in enumerate(cps)}
    sampler = Sampler(
        {
            "control plane": cps,
            **(groups if len(cps) > 1 else {}),
            "mosquitto": [stack.broker.pid],
            "postgres": database_pids(postmaster),
            "devices": [p.pid for p in devices.procs],
        },
        interval=0.25,
    ).start()
    t0 = time.time()
    dep = stack.call("POST", "/deployments", json={"package_digest": digest, "selector": LABEL})[
        "id"
    ]
    create_s = time.time() - t0
    wait_until(
        f"{n} devices committed version {version}",
        lambda: devices.count_since(t0)[0] >= n,
        600,
        0.05,
    )
    device_s = devices.count_since(t0)[1] - t0
    summary: dict[str, int] = {}

    def api_done() -> bool:
        nonlocal summary
        summary = stack.call("GET", f"/deployments/{dep}")["summary"]
        return summary.get("installed", 0) + summary.get("failed", 0) >= n

    try:
        wait_until(f"{n} devices installed on the API", api_done, 600, 0.2)
        api_s = time.time() - t0
    finally:
        usage = sampler.stop()
    cp = usage["control plane"]
    return Round(
        version=version,
        device_s=device_s,
        api_s=api_s,
        create_s=create_s,
        installed=summary.get("installed", 0),
        cp_cpu_s=cp.cpu_s,
        cp_cpu_per_device_ms=1000 * cp.cpu_s / n,
        cp_rss_peak_mb=cp.rss_peak_mb,
        usage=usage,
        machine=sampler.machine,
    )


def run_config(
    cfg: Config,
    work: Path,
    trusted_pub: Path,
    packages: list[Path],
    database_url: str | None,
    procs_n: int,
    postmaster: int | None = None,
) -> Result:
    """One configuration on a fresh stack: register, connect, then ``len(packages)`` rounds."""
    log(f"--- {cfg.title}")
    with ExitStack() as cleanup:
        stack = start_stack(cfg, work, trusted_pub, database_url)
        cleanup.callback(stack.close)
        replicas = start_more_replicas(cfg, stack)
        cleanup.callback(lambda: [stop_process(r.proc) for r in replicas])
        t = time.perf_counter()
        bundles, tenths, reg_cpu = register_all(stack, cfg.devices)
        register_s = time.perf_counter() - t
        log(
            f"registered {cfg.devices} devices in {register_s:.1f} s (first tenth "
            f"{tenths[0]:.2f} s, last {tenths[-1]:.2f} s; control plane CPU {reg_cpu:.1f} s)"
        )
        digests = []
        for pkg in packages:
            with open(pkg, "rb") as f:
                digests.append(
                    stack.call("POST", "/packages", files={"file": (pkg.name, f)})["digest"]
                )
        t = time.perf_counter()
        devices = Devices(stack, bundles, procs_n)
        cleanup.callback(devices.stop)
        log(f"{cfg.devices} devices connected in {time.perf_counter() - t:.1f} s")
        time.sleep(2)  # let the connect burst's reports settle before measuring
        result = Result(cfg, register_s, tenths, reg_cpu)
        for i, digest in enumerate(digests):
            r = deploy_round(stack, replicas, devices, digest, str(i + 1), cfg.devices, postmaster)
            log(
                f"round {i + 1}: devices {r.device_s:.2f} s, API {r.api_s:.2f} s (call "
                f"{r.create_s:.2f} s); control plane {r.cp_cpu_s:.1f} CPU-s "
                f"({r.cp_cpu_per_device_ms:.1f} ms/device), RSS peak {r.cp_rss_peak_mb:.0f} MB"
            )
            result.rounds.append(r)
            time.sleep(1)
    return result


# --- report -------------------------------------------------------------------------------------


def print_report(results: list[Result], load_before: str, load_after: str) -> None:
    base = {
        r.config.devices: r
        for r in results
        if (r.config.engine, r.config.replicas) == ("sqlite", 1)
    }
    one_pg = {
        r.config.devices: r
        for r in results
        if (r.config.engine, r.config.replicas) == ("postgres", 1)
    }
    rows = [
        (
            "configuration",
            "register s (1st/last tenth)",
            "call -> all installed (API), s",
            "ratio",
            "CP CPU ms/device",
            "CP RSS peak MB",
            "target",
        )
    ]
    for r in results:
        cfg = r.config
        api = [f"{x.api_s:.1f}" for x in r.rounds]
        target = f"<= {TARGET_S:.0f} s {verdict(max(x.api_s for x in r.rounds) <= TARGET_S)}"
        ratio = ""
        if cfg.engine == "postgres" and cfg.replicas == 1 and cfg.devices in base:
            q = r.api_s / base[cfg.devices].api_s
            ratio = f"{q:.2f}x"
            target += f"; <= {TARGET_PG_RATIO}x {verdict(q <= TARGET_PG_RATIO)}"
        if cfg.replicas > 1 and cfg.devices in one_pg:
            speed = one_pg[cfg.devices].api_s / r.api_s
            ratio = f"rate {speed:.2f}x"
            target += (
                f"; rate >= {TARGET_REPLICA_SPEEDUP}x {verdict(speed >= TARGET_REPLICA_SPEEDUP)}"
            )
        rows.append(
            (
                cfg.title,
                f"{r.register_s:.1f} ({r.register_tenths_s[0]:.2f}/{r.register_tenths_s[-1]:.2f})",
                " / ".join(api),
                ratio,
                f"{r.cpu_per_device_ms:.1f}",
                f"{max(x.cp_rss_peak_mb for x in r.rounds):.0f}",
                target,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    print("\n" + line)
    for i, row in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print(line)
    print(line)
    print(f"\nload average {load_before} before, {load_after} after ({os.cpu_count()} CPUs)")
    print("details per round:")
    for r in results:
        for x in r.rounds:
            print(
                f"  {r.config.title}, version {x.version}: call {x.create_s:.2f} s, devices "
                f"{x.device_s:.2f} s, API {x.api_s:.2f} s, {x.installed} installed"
            )
            for g, u in x.usage.items():
                print(f"    {g}: {fmt_usage(u)}")
            print(f"    {x.machine}")


def postmaster_pid(cluster: Any) -> int | None:
    """The throwaway cluster's postmaster (first line of its ``postmaster.pid``)."""
    try:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_packager.signing import generate_keypair

    keys = work / "keys"
    generate_keypair(keys / "release.key", keys / "release.pub")
    (work / "packages").mkdir()
    packages = [
        build_signed(
            make_onnx(work / f"tiny-{v}.onnx", 4, 4, seed=v),
            "bench-scale",
            str(v),
            keys / "release.key",
            work / "packages",
        )
        for v in range(1, args.rounds + 1)
    ]
    configs: list[Config] = []
    for n in args.simulated:
        for engine in args.engines:
            configs.append(Config(n, engine))
        if "postgres" in args.engines and args.replicas > 1 and n >= args.replicas_from:
            configs.append(Config(n, "postgres", args.replicas))
    cluster = None
    if "postgres" in args.engines:
        from tests.pg import start_cluster

        cluster = start_cluster()
    load_before = _load()
    results = []
    try:
        for cfg in configs:
            on_pg = cluster is not None and cfg.engine == "postgres"
            url = cluster.create_database() if on_pg else None
            pm = postmaster_pid(cluster) if on_pg else None
            results.append(
                run_config(
                    cfg,
                    work / cfg.tag,
                    keys / "release.pub",
                    packages,
                    url,
                    -(-cfg.devices // args.per_proc),
                    pm,
                )
            )
    finally:
        if cluster is not None:
            cluster.stop()
    load_after = _load()
    print_report(results, load_before, load_after)
    return {"load": [load_before, load_after], "results": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-rollout --simulated", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument(
        "--simulated",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[200, 1000],
        help="device counts, comma separated (default 200,1000)",
    )
    parser.add_argument(
        "--engines",
        type=lambda s: s.split(","),
        default=["sqlite", "postgres"],
        help="sqlite,postgres (default both)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="replicas on PostgreSQL (2)")
    parser.add_argument(
        "--replicas-from", type=int, default=1000, help="least device count for the replica run"
    )
    parser.add_argument("--rounds", type=int, default=2, help="deployments per configuration")
    parser.add_argument(
        "--per-proc",
        type=int,
        default=DEVICES_PER_PROCESS,
        help=f"devices per process (default {DEVICES_PER_PROCESS})",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    print(
        f"bench-rollout --simulated {','.join(map(str, args.simulated))}: FleetClient devices "
        f"(stand-in installer), {args.per_proc} to a process, Mosquitto with the generated files, "
        f"`control-plane serve` on {' and '.join(args.engines)}; {os.cpu_count()} CPUs, load "
        f"average {_load()}",
        flush=True,
    )
    return run_in_work_folder("bench-rollout-scale", run, args)


if __name__ == "__main__":
    sys.exit(main())
