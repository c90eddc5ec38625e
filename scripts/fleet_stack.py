"""The fleet as the fleet scripts run it: a real Mosquitto, ``control-plane serve``, real agents.

``scripts/bench-rollout``, ``scripts/bench-flood`` and ``scripts/fleet-soak`` all need the same
stack, started the way production runs it, on loopback:

* Mosquitto on a free port, with ``mosquitto.conf``, ``passwd`` and ``acl`` written by
  ``control_plane.fleet.broker_config`` (the code behind ``control-plane broker-config``),
  persistence on;
* the control plane as a subprocess, ``control-plane serve``, on a SQLite file, connected to that
  Mosquitto with its own identity and HUPing it when the registry changes;
* the scripts' own clients (the reported-state observer, a benchmark's raw publisher and
  subscribers) under identities of their own, declared in the broker's local identity files
  (``passwd.local``/``acl.local``), each allowed only what it uses: the broker binds every client
  id to its user name, so a client using the control plane's identity would take the control
  plane's session over;
* devices registered over the REST API, their bundles turned into agent configs by
  ``edge_agent.fleet.bundle.config_from_bundle`` (what ``edge-agent join`` runs), each agent an
  ``edge-agent run`` process on free ports.

One module so that the benchmarks and the soak measure and break the very same setup. Each piece
can be stopped, killed and started again on the same port and data folder (the soak restarts the
broker and kill -9s the control plane and agents), and every process started is entered in
``Stack.ledger`` so a script can prove none outlived it. Heavy imports (paho, httpx, psutil) live
here rather than in ``script_support``, which the non-fleet scripts import too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from script_support import (
    api_client,
    console_script,
    free_port,
    request_json,
    spawn_logged,
    stop_process,
    wait_until,
)

from protos import fleet_topics
from protos.gen import fleet_pb2

# The reported-state observer's identity (a local identity, see write_local_identities).
OBSERVER_USER = "fleet-observer"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- models and packages ------------------------------------------------------------------------


def make_onnx(path: Path, in_dim: int, out_dim: int, seed: int) -> Path:
    """y = x @ W with a random float32 W of in_dim x out_dim (random: the bytes do not compress)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_dim, out_dim), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_dim])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build_signed(model: Path, name: str, version: str, key: Path, out: Path) -> Path:
    from model_packager.build import ArtifactInput, BuildSpec, build_package
    from model_packager.signing import load_private_key

    spec = BuildSpec(name=name, version=version, artifacts=[ArtifactInput(path=model)])
    return build_package(spec, out, load_private_key(key))


# --- the processes we start ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spawned:
    """One process a script started (or found under one it started), told apart from a later
    process that reuses its pid by its creation time."""

    pid: int
    created: float
    what: str

    @classmethod
    def of(cls, pid: int, what: str) -> Spawned | None:
        try:
            return cls(pid, psutil.Process(pid).create_time(), what)
        except psutil.Error:
            return None

    def alive(self) -> bool:
        """Still running (a zombie counts: nobody reaped it)."""
        try:
            return psutil.Process(self.pid).create_time() == self.created
        except psutil.Error:
            return False


@dataclass
class Ledger:
    """Every process started, and the descendants seen under them, for the leak check.

    Descendants are noted whenever a process is about to be killed (``note_descendants``): once
    their parent is gone they are re-parented away from us, and only the ledger remembers them.
    """

    entries: dict[tuple[int, float], Spawned] = field(default_factory=dict)

    def add(self, proc: subprocess.Popen[Any], what: str) -> None:
        s = Spawned.of(proc.pid, what)
        if s is not None:
            self.entries[(s.pid, s.created)] = s

    def note_descendants(self, pid: int, what: str) -> None:
        with suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                s = Spawned.of(child.pid, f"{what} child {child.pid}")
                if s is not None:
                    self.entries.setdefault((s.pid, s.created), s)

    def note_all_descendants(self) -> None:
        """Everything under this process right now (children of children included)."""
        self.note_descendants(os.getpid(), "script")

    def alive(self) -> list[Spawned]:
        return [s for s in self.entries.values() if s.alive()]


def kill_hard(proc: subprocess.Popen[Any] | None, ledger: Ledger | None = None) -> None:
    """SIGKILL one of our own children (by its pid) and reap it: the crash a fault injects."""
    if proc is None or proc.poll() is not None:
        return
    if ledger is not None:
        ledger.note_descendants(proc.pid, "killed process")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


# --- broker and control plane -------------------------------------------------------------------


@dataclass
class Stack:
    """The broker and the control plane of one run, and how to (re)start each of them.

    ``cp_extra_env`` holds further ``CONTROL_PLANE_*`` settings (e.g. a smaller chunk size).
    ``local_identities`` are the scripts' own MQTT clients, user name -> ACL rules
    (``"read edge/+/reported"``), written to the broker's local identity files with the
    password ``local_password`` when the broker files are first written (``observer_rules`` by
    default; a script adds its own before ``start_broker``).
    """

    work: Path
    broker_port: int
    api_port: int
    api_token: str
    mqtt_password: str
    trusted_pub: Path
    cp_extra_env: dict[str, str] = field(default_factory=dict)
    local_identities: dict[str, list[str]] = field(default_factory=lambda: observer_rules())
    local_password: str = field(default_factory=lambda: secrets.token_hex(16))
    broker: subprocess.Popen[bytes] | None = None
    cp: subprocess.Popen[bytes] | None = None
    api: httpx.Client | None = None
    api_timeout: float = 120.0
    ledger: Ledger = field(default_factory=Ledger)
    broker_conf: Path | None = None

    @classmethod
    def on_free_ports(cls, work: Path, trusted_pub: Path, **options: Any) -> Stack:
        """A stack for one run: free loopback ports for the broker and the API, and a fresh API
        token and MQTT password, so runs side by side never share a port or a secret.
        ``options`` are the other fields (``cp_extra_env``, ``local_identities``, ...)."""
        return cls(
            work=work,
            broker_port=free_port(),
            api_port=free_port(),
            api_token=secrets.token_hex(16),
            mqtt_password=secrets.token_hex(16),
            trusted_pub=trusted_pub,
            **options,
        )

    @property
    def broker_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker_port}"

    @property
    def broker_pid_file(self) -> Path:
        return self.work / "mosquitto.pid"

    def cp_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTROL_PLANE_API_TOKEN": self.api_token,
            "CONTROL_PLANE_MQTT_PASSWORD": self.mqtt_password,
            "CONTROL_PLANE_DATA_DIR": str(self.work / "cp"),
            "CONTROL_PLANE_TRUSTED_KEYS": json.dumps([str(self.trusted_pub)]),
            "CONTROL_PLANE_MQTT_URL": self.broker_url,
            "CONTROL_PLANE_HOST": "127.0.0.1",
            "CONTROL_PLANE_PORT": str(self.api_port),
            "CONTROL_PLANE_BROKER_CONFIG_DIR": str(self.work / "broker"),
            # Through the pid file, not a fixed pid: the broker may have been restarted since
            # the control plane started, and a stale pid could name someone else's process.
            "CONTROL_PLANE_BROKER_RELOAD_COMMAND": (
                f'sh -c "kill -HUP $(cat {self.broker_pid_file})"'
            ),
            **self.cp_extra_env,
        }

    def call(self, method: str, path: str, **kw: Any) -> Any:
        assert self.api is not None
        return request_json(self.api, method, path, **kw)

    def close(self) -> None:
        """Stop the control plane, then the broker (SIGTERM, SIGKILL after a grace period)."""
        if self.cp is not None:
            self.ledger.note_descendants(self.cp.pid, "control plane")
        stop_process(self.cp)
        stop_process(self.broker)
        if self.api is not None:
            self.api.close()


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        raise SystemExit("the fleet scripts need mosquitto (apt-get install mosquitto)")
    return path


def observer_rules() -> dict[str, list[str]]:
    """The reported-state observer's identity: it reads every device's reported state, no more."""
    return {OBSERVER_USER: [f"read {fleet_topics.all_devices_filter(fleet_topics.REPORTED)}"]}


def write_local_identities(folder: Path, password: str, rules: dict[str, list[str]]) -> None:
    """The scripts' clients in the broker's local identity files (``passwd.local``/``acl.local``),
    each with only the rules given; broker_config appends them to ``passwd``/``acl``."""
    from control_plane.core.credentials import hash_password
    from control_plane.fleet.broker_config import LOCAL_ACL_NAME, LOCAL_PASSWD_NAME

    hashed = hash_password(password)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCAL_PASSWD_NAME).write_text("".join(f"{u}:{hashed}\n" for u in rules))
    acl = "".join(
        f"user {u}\n" + "".join(f"topic {r}\n" for r in user_rules)
        for u, user_rules in rules.items()
    )
    (folder / LOCAL_ACL_NAME).write_text(acl)


def write_broker_files(stack: Stack) -> Path:
    """Write the broker files from the (empty) registry and the scripts' local identities with
    broker_config; returns the conf."""
    from control_plane.core.context import AppContext
    from control_plane.core.database import upgrade
    from control_plane.core.settings import Settings
    from control_plane.fleet.broker_config import ListenerOptions, write_broker_config

    settings = Settings(
        api_token=stack.api_token,
        mqtt_password=stack.mqtt_password,
        data_dir=stack.work / "cp",
        trusted_keys=[stack.trusted_pub],
    )
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    options = ListenerOptions(
        port=stack.broker_port,
        bind="127.0.0.1",
        persistence=True,  # as `control-plane broker-config` writes it for production
        run_as_user="root" if os.geteuid() == 0 else None,
    )
    write_local_identities(stack.work / "broker", stack.local_password, stack.local_identities)
    with ctx.sessions() as session:
        conf = write_broker_config(settings, session, stack.work / "broker", options)
    ctx.close()
    return conf


def start_broker(stack: Stack) -> None:
    """Start Mosquitto (writing its files first, the first time) and wait until it listens.

    A restart reuses the files the control plane has kept current since (the local identities
    included), and the persistence folder, so retained messages and the control plane's session
    survive it.
    """
    if stack.broker_conf is None:
        stack.broker_conf = write_broker_files(stack)
    stack.broker = spawn_logged(
        [mosquitto_binary(), "-c", str(stack.broker_conf)],
        stack.work / "mosquitto.log",
        append=True,
    )
    stack.ledger.add(stack.broker, "mosquitto")
    stack.broker_pid_file.write_text(str(stack.broker.pid))

    def listening() -> bool:
        assert stack.broker is not None
        if stack.broker.poll() is not None:
            raise RuntimeError((stack.work / "mosquitto.log").read_text()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", stack.broker_port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until("mosquitto listening", listening, 10, 0.05)


def stop_broker(stack: Stack) -> None:
    """A clean broker stop (SIGTERM): Mosquitto writes its persistence file on the way out."""
    stop_process(stack.broker)
    stack.broker = None


def spawn_control_plane(stack: Stack) -> None:
    """Start ``control-plane serve`` on the run's data folder and return at once.

    Also a restart after a kill: same port, same SQLite file, same broker files. Whether it is
    up yet is ``control_plane_healthy``; ``start_control_plane`` waits for it.
    """
    stack.cp = spawn_logged(
        [*console_script("control-plane"), "serve"],
        stack.work / "control-plane.log",
        env=stack.cp_env(),
        append=True,
    )
    stack.ledger.add(stack.cp, "control plane")
    if stack.api is None:
        stack.api, _ = api_client(f"http://127.0.0.1:{stack.api_port}", stack.api_token)
        stack.api.timeout = httpx.Timeout(stack.api_timeout)


def control_plane_healthy(stack: Stack) -> bool:
    """Serving its API and connected to the broker; RuntimeError when the process died."""
    assert stack.cp is not None and stack.api is not None
    if stack.cp.poll() is not None:
        log_tail = (stack.work / "control-plane.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"control plane exited with {stack.cp.returncode}:\n{log_tail}")
    try:
        return bool(stack.api.get("/health", timeout=2).json().get("broker_connected"))
    except (httpx.HTTPError, ValueError):
        return False


def start_control_plane(stack: Stack, timeout: float = 60.0) -> None:
    """``spawn_control_plane``, then wait until it serves and is connected to the broker."""
    spawn_control_plane(stack)
    wait_until(
        "control plane healthy and connected to the broker",
        lambda: control_plane_healthy(stack),
        timeout,
        0.2,
    )


def mqtt_client(port: int, username: str, password: str, client_id: str) -> mqtt.Client:
    """A connected paho client with its network thread running."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    client.username_pw_set(username, password)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            refused.append(str(rc))
        connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(10) or refused:
        client.loop_stop()
        raise ConnectionError(f"{username}: {refused or 'no CONNACK'}")
    return client


def wait_credentials(stack: Stack, bundle: dict[str, Any]) -> None:
    """Mosquitto rereads passwd on HUP; wait until the newest device's credentials work.

    The probe is that device as far as the broker is concerned (it binds the client id to the
    user name): call this before the device itself connects, or the probe takes its connection.
    """
    m = bundle["mqtt"]

    def accepted() -> bool:
        try:
            c = mqtt_client(stack.broker_port, m["username"], m["password"], m["username"])
        except ConnectionError:
            return False
        c.disconnect()
        c.loop_stop()
        return True

    wait_until("broker accepts the registered credentials", accepted, 20, 0.2)


def register(stack: Stack, device_id: str, labels: dict[str, str]) -> dict[str, Any]:
    """Register a device over the API; returns its config bundle (shown once)."""
    return dict(
        stack.call("POST", "/devices", json={"device_id": device_id, "labels": labels})["bundle"]
    )


def upload(stack: Stack, package: Path) -> dict[str, Any]:
    with open(package, "rb") as f:
        return dict(stack.call("POST", "/packages", files={"file": (package.name, f)}))


# --- sampling -----------------------------------------------------------------------------------


@dataclass
class Usage:
    cpu_s: float = 0.0
    cpu_mean_pct: float = 0.0
    cpu_peak_pct: float = 0.0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0


@dataclass
class Machine:
    """What the whole machine did in a phase: the benchmark shares it with whatever else runs."""

    wall_s: float = 0.0
    busy_s: float = 0.0
    ours_s: float = 0.0
    cpus: int = field(default_factory=lambda: psutil.cpu_count() or 1)
    load_avg_1m: float = field(default_factory=lambda: os.getloadavg()[0])

    def __str__(self) -> str:
        other = max(0.0, self.busy_s - self.ours_s)
        return (
            f"machine busy {self.busy_s:.1f} of {self.wall_s * self.cpus:.1f} core-s "
            f"({self.cpus} CPUs, load average {self.load_avg_1m:.1f}); this benchmark "
            f"{self.ours_s:.1f} core-s, other processes {other:.1f} core-s"
        )


class Sampler:
    """CPU and RSS of groups of processes (summed per group), sampled every ``interval``.

    A process's CPU includes its children that it has waited for (an agent's short-lived
    signature-check child, where it runs one): they do the process's work."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.5) -> None:
        self.groups = {
            name: [psutil.Process(p) for p in pids] for name, pids in groups.items() if pids
        }
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: dict[str, list[tuple[float, float]]] = {g: [] for g in self.groups}
        self._cpu0: dict[str, float] = {}
        self._rss0: dict[str, float] = {}
        self._t0 = 0.0
        self.wall = 0.0
        self._machine0 = self._ours0 = 0.0
        self.machine = Machine()

    def _cpu(self, procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def _rss(self, procs: list[psutil.Process]) -> float:
        total = 0
        for p in procs:
            with suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    @staticmethod
    def machine_busy() -> float:
        """CPU seconds all cores spent not idle since boot."""
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    @staticmethod
    def ours() -> float:
        """CPU seconds of this benchmark: itself, its reaped children and its live descendants."""
        me = psutil.Process()
        t = me.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in me.children(recursive=True):
            with suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return total

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._machine0, self._ours0 = self.machine_busy(), self.ours()
        for g, procs in self.groups.items():
            self._cpu0[g] = self._cpu(procs)
            self._rss0[g] = self._rss(procs)
        self._thread.start()
        return self

    def _run(self) -> None:
        last = {g: (time.monotonic(), self._cpu0[g]) for g in self.groups}
        while not self._stop.wait(self.interval):
            for g, procs in self.groups.items():
                now, cpu = time.monotonic(), self._cpu(procs)
                t_prev, c_prev = last[g]
                pct = 100 * (cpu - c_prev) / max(1e-6, now - t_prev)
                last[g] = (now, cpu)
                self.samples[g].append((pct, self._rss(procs)))

    def stop(self) -> dict[str, Usage]:
        self._stop.set()
        self._thread.join()
        self.wall = time.monotonic() - self._t0
        self.machine = Machine(
            wall_s=self.wall,
            busy_s=self.machine_busy() - self._machine0,
            ours_s=self.ours() - self._ours0,
        )
        out = {}
        for g, procs in self.groups.items():
            cpu = self._cpu(procs) - self._cpu0[g]
            s = self.samples[g]
            mean = 100 * cpu / max(1e-6, self.wall)
            out[g] = Usage(
                cpu_s=cpu,
                cpu_mean_pct=mean,
                cpu_peak_pct=max((p for p, _ in s), default=mean),  # a phase shorter than a sample
                rss_start_mb=self._rss0[g],
                rss_peak_mb=max([self._rss0[g], *(r for _, r in s)]),
            )
        return out


def fmt_usage(u: Usage) -> str:
    return (
        f"CPU {u.cpu_s:.1f} s (mean {u.cpu_mean_pct:.0f}%, peak {u.cpu_peak_pct:.0f}%), "
        f"RSS {u.rss_start_mb:.0f} -> peak {u.rss_peak_mb:.0f} MB"
    )


# --- agents -------------------------------------------------------------------------------------


@dataclass
class Agent:
    """One ``edge-agent run`` process and its folder; can be killed and started again."""

    device_id: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def port_file(self) -> Path:
        return self.workdir / "ports.json"

    @property
    def config(self) -> Path:
        return self.workdir / "agent.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{json.loads(self.port_file.read_text())['grpc']}"

    def spawn(self, ledger: Ledger | None = None) -> None:
        """Start the process (its port file appears once it serves: ``wait_serving``)."""
        self.port_file.unlink(missing_ok=True)
        self.proc = spawn_logged(
            [*console_script("edge-agent"), "run", "--config", str(self.config)],
            self.log_path,
            append=self.starts > 0,
        )
        self.starts += 1
        if ledger is not None:
            ledger.add(self.proc, f"agent {self.device_id}")

    def serving(self) -> bool:
        """True once it serves; RuntimeError when the process died first."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"agent {self.device_id} exited with {self.proc.returncode}: {self.log_path}"
            )
        return self.port_file.exists()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def write_agent_config(
    stack: Stack, bundle: dict[str, Any], fleet_overrides: dict[str, Any] | None = None
) -> Agent:
    """An agent folder with its config made by config_from_bundle (``edge-agent join``)."""
    from edge_agent.fleet.bundle import config_from_bundle

    a = Agent(bundle["device_id"], stack.work / "agents" / bundle["device_id"])
    a.workdir.mkdir(parents=True)
    config = config_from_bundle(
        bundle,
        a.workdir,
        data_dir=str(a.workdir / "data"),
        grpc_port=0,
        http_port=-1,
        metrics_port=-1,
        port_file=str(a.port_file),
        log_level="INFO",
    )
    config["fleet"].update(fleet_overrides or {})
    a.config.write_text(yaml.safe_dump(config, sort_keys=False))
    return a


def start_agents(
    stack: Stack, bundles: list[dict[str, Any]], fleet_overrides: dict[str, Any] | None = None
) -> list[Agent]:
    """``edge-agent run`` per bundle; returns once all of them serve."""
    agents = [write_agent_config(stack, b, fleet_overrides) for b in bundles]
    for a in agents:
        a.spawn(stack.ledger)

    def all_serving() -> bool:
        return all([a.serving() for a in agents])

    wait_until(f"{len(agents)} agents serving", all_serving, 60 + 5 * len(agents), 0.2)
    return agents


def stop_agents(agents: list[Agent], ledger: Ledger | None = None) -> None:
    """SIGTERM all at once (they stop in parallel), then wait for each (SIGKILL if it hangs)."""
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            if ledger is not None:
                ledger.note_descendants(a.proc.pid, f"agent {a.device_id}")
            a.proc.send_signal(signal.SIGTERM)
    for a in agents:
        if a.proc is not None:
            stop_process(a.proc)


def wait_online(stack: Stack, label: str, count: int, timeout: float, key: str = "bench") -> None:
    def online() -> bool:
        devices = stack.call("GET", "/devices", params={"label": f"{key}={label}"})
        return sum(d["status"] == "online" for d in devices) >= count

    wait_until(f"{count} {label} devices online", online, timeout, 0.25)


# --- reported-state observer --------------------------------------------------------------------


@dataclass(frozen=True)
class ReportEvent:
    at: float
    device_id: str
    deployment_id: str
    outcome: str
    step: str
    reason: str
    chunks_done: int = 0
    chunks_total: int = 0


class ReportedWatcher:
    """Follows ``edge/+/reported`` as ``OBSERVER_USER`` (its local ACL lets it read that only).

    paho reconnects it by itself after a broker restart (``loop_start``), re-subscribing in
    ``on_connect``.
    """

    def __init__(self, stack: Stack) -> None:
        self.events: list[ReportEvent] = []
        self._lock = threading.Lock()
        # Client id = user name: the broker binds the one to the other (one observer per stack).
        self.client = mqtt_client(
            stack.broker_port, OBSERVER_USER, stack.local_password, OBSERVER_USER
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._subscribe()

    def _subscribe(self) -> None:
        self.client.subscribe(fleet_topics.all_devices_filter(fleet_topics.REPORTED), 1)

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if not getattr(rc, "is_failure", False):
            self._subscribe()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        parsed = fleet_topics.parse_topic(msg.topic)
        if parsed is None or not msg.payload:
            return
        state = fleet_pb2.ReportedState()
        state.ParseFromString(msg.payload)
        if not state.HasField("last_result"):
            return
        r = state.last_result
        outcome = fleet_pb2.DeploymentResult.Outcome.Name(r.outcome)
        with self._lock:
            self.events.append(
                ReportEvent(
                    at,
                    parsed.device_id,
                    r.deployment_id,
                    outcome,
                    r.step,
                    r.reason,
                    r.chunks_done,
                    r.chunks_total,
                )
            )

    def final(self, deployment_id: str) -> dict[str, ReportEvent]:
        """First INSTALLED or FAILED report per device for this deployment."""
        out: dict[str, ReportEvent] = {}
        with self._lock:
            for e in self.events:
                if e.deployment_id == deployment_id and e.outcome in ("INSTALLED", "FAILED"):
                    out.setdefault(e.device_id, e)
        return out

    def downloaded(self, deployment_id: str) -> dict[str, float]:
        """When each device said it holds the checked package (IN_PROGRESS at step install)."""
        out: dict[str, float] = {}
        with self._lock:
            for e in self.events:
                if e.deployment_id == deployment_id and (e.step, e.outcome) == (
                    "install",
                    "IN_PROGRESS",
                ):
                    out.setdefault(e.device_id, e.at)
        return out

    def mid_transfer(self, deployment_id: str) -> set[str]:
        """Devices that reported some but not all chunks of this deployment's package."""
        with self._lock:
            return {
                e.device_id
                for e in self.events
                if e.deployment_id == deployment_id
                and e.outcome == "IN_PROGRESS"
                and 0 < e.chunks_done < e.chunks_total
            }

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
