"""The replica supervisor: keeps every online service's agent processes running and up to date.

One thread, one tick every ``TICK_S``. For each replica of each service it:

- starts the agent (``python -m edge_agent run --config <replica>/agent.yaml``) when no process
  runs, and restarts a crashed one after a backoff that doubles per restart (at most
  ``services.restart_backoff_max_s``);
- reads the agent's port file to learn its gRPC (and HTTP) address;
- gives it the service's models: a deployment of each model version's signed package to the
  replica's device; of several versions of one model, the first listed is activated and the
  others are standby deployments with their weights (the agent's traffic split). A fresh
  replica gets them at once; when the service's models or weights change, the replicas get the
  new ones one at a time, the next only once the previous has installed them, so a rolling
  update never leaves the service without a replica serving;
- and sets the service's state from what it sees: ``running`` once every replica runs and has
  its models installed, ``failed`` when an install failed (with the device's reason).

A batch service (``services/batch.py``) goes through the same steps with its one replica; once
it runs with its model installed, a ``BatchFollower`` thread submits the job and follows it.
Its ``succeeded`` and ``failed`` are final: the supervisor stops the replica and leaves it so.

Processes are started in their own session, so a control plane killed with SIGKILL leaves them
running: the next start adopts them by pid (when ``/proc/<pid>/cmdline`` still names the
replica's config) instead of starting a second copy. A graceful stop ends them.

With several control-plane replicas (``replicas.id``), each service's agents are run by exactly
one of them, its *owner* (``services/ownership.py``): the others' supervisors leave the service
alone, and their REST proxies reach its agents at ``owner_address``. When the owner's heartbeat
stops, a survivor claims the service and starts its agents afresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.workers import pid_alive
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.registry.service import ModelService
from control_plane.services import ownership
from control_plane.services.batch import DONE, BatchFollower
from control_plane.services.models import Service, ServiceReplica

logger = logging.getLogger(__name__)

TICK_S = 0.5
STOP_GRACE_S = 10.0


@dataclass
class _Process:
    pid: int
    popen: subprocess.Popen[bytes] | None  # None: adopted from an earlier control plane
    next_start: float = 0.0  # after a crash: not before this (monotonic)


@dataclass
class ReplicaView:
    """What the supervisor knows of a replica beyond its row: its models' install state."""

    installed: bool = False
    failed: str = ""
    wanted: list[WantedVersion] = field(default_factory=list)


@dataclass(frozen=True)
class WantedVersion:
    """One version a replica should hold: active, or standby with its weight (percent)."""

    model: str
    version: str
    digest: str
    standby: bool
    weight: float


class Supervisor:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.root = ctx.settings.resolved_services_dir
        self._procs: dict[tuple[str, int], _Process] = {}
        self._backoff: dict[tuple[str, int], float] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._followers: dict[str, BatchFollower] = {}
        # This control plane's replica id (None: the only control plane, which owns everything).
        self.me = ctx.settings.replicas.id
        self._next_claim = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, ctx: AppContext) -> Supervisor:
        supervisor = cls(ctx)
        supervisor.root.mkdir(parents=True, exist_ok=True)
        # Before the API can read them: rows of replicas that no longer run must not say running.
        supervisor._adopt()
        supervisor._thread = threading.Thread(
            target=supervisor._loop, name="service-supervisor", daemon=True
        )
        supervisor._thread.start()
        return supervisor

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread and every replica process (a restart starts or adopts them again)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            keys = list(self._procs)
            for key in keys:
                self._terminate(key)
        with self.ctx.sessions() as session:
            for key in keys:
                replica = session.get(ServiceReplica, key)
                if replica is not None:
                    _forget_process(replica, "stopped")
            session.commit()

    # --- folders -----------------------------------------------------------------------------

    def replica_dir(self, service: str, index: int) -> Path:
        return self.root / service / str(index)

    def service_dir(self, service: str) -> Path:
        return self.root / service

    def write_config(
        self, service: str, index: int, bundle: dict[str, Any], models: dict[str, Any]
    ) -> Path:
        """The replica's agent config: the device bundle, loopback ports, its own data folder,
        and each model's batching settings."""
        folder = self.replica_dir(service, index)
        keys = folder / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        key_files = []
        for i, pem in enumerate(bundle["trusted_keys_pem"]):
            path = keys / f"trusted-{i}.pub"
            path.write_text(pem)
            key_files.append(str(path))
        config = {
            "device_id": bundle["device_id"],
            "data_dir": str(folder / "data"),
            "grpc_host": self.ctx.settings.services.agent_host,
            "grpc_port": 0,
            "http_host": self.ctx.settings.services.agent_host,
            "http_port": 0,
            "metrics_port": -1,
            "port_file": str(folder / "ports.json"),
            "trusted_keys": key_files,
            "fleet": {
                **bundle["mqtt"],
                "telemetry_interval_s": self.ctx.settings.services.telemetry_interval_s,
            },
            "models": models,
        }
        path = folder / "agent.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(tmp, 0o600)  # it holds the device's broker password
        os.replace(tmp, path)
        return path

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("service supervisor tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _adopt(self) -> None:
        """Processes an earlier control plane started and left running become ours again; the
        rows of those that are gone are reset, to be started by the first tick."""
        with self.ctx.sessions() as session:
            for service in session.scalars(select(Service)).all():
                if service.type == "edge":
                    continue  # devices run it; the rollout engine drives it
                if not self._mine(service):
                    continue  # another replica runs its agents
                for replica in service.replicas:
                    key = (replica.service_name, replica.index)
                    if replica.pid and _runs(replica.pid, self._config(key)):
                        self._procs[key] = _Process(replica.pid, None)
                        logger.info("adopted replica %s/%d (pid %d)", *key, replica.pid)
                        continue
                    _forget_process(replica, "starting")
                    if service.state == "running":
                        service.state, service.reason = "deploying", "restarting replicas"
            session.commit()

    def tick(self) -> None:
        with self._lock, self.ctx.sessions() as session:
            if self.me is not None and time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + self.ctx.settings.replicas.heartbeat_s
                self._claim(session)
            services = session.scalars(select(Service)).all()
            self._drop_foreign(
                {s.name for s in services if self._mine(s)}, {s.name for s in services}
            )
            for service in services:
                if service.state == "stopped" or service.type == "edge":
                    continue
                if not self._mine(service):
                    continue
                batch = service.type == "batch"
                if batch and service.spec.get("device"):
                    continue  # runs on a device: the fleet channel drives it (device_batch.py)
                if batch and service.state in DONE:
                    self._stop_replicas(service)
                    continue
                views = {}
                for replica in service.replicas:
                    self._keep_running(service, replica)
                    views[replica.index] = self.view(session, service, replica)
                self._roll_out(session, service, views)
                self._set_state(service, views)
                if batch and service.state == "running":
                    self._follow(service.name)
            session.commit()

    # --- several control-plane replicas ---------------------------------------------------------

    def _mine(self, service: Service) -> bool:
        """Whether this control plane runs the service's agents."""
        return self.me is None or service.owner == self.me

    def _claim(self, session: Session) -> None:
        """Take over the services no live replica owns; start their agents afresh."""
        lease_s = self.ctx.settings.replicas.lease_s
        assert self.me is not None
        for name, previous in ownership.claim_orphans(
            session, self.me, self.ctx.settings.services.agent_host, lease_s
        ):
            service = session.get(Service, name)
            if service is None:
                continue
            ownership.end_old_agents(session, service, previous)
            if service.type == "batch":
                if service.state not in DONE and previous is not None:
                    # Its inputs and results live in the old owner's folder: it cannot go on.
                    service.state = "failed"
                    service.reason = f"replica {previous} stopped while the batch service ran"
                    service.updated_at = utcnow()
                session.commit()
                continue
            for replica in service.replicas:
                self._procs.pop((name, replica.index), None)
                registration = DeviceService(session, self.ctx).reset_password(replica.device_id)
                bundle = DeviceService(session, self.ctx).bundle(registration).model_dump()
                models = self.model_settings(service)
                self.write_config(name, replica.index, bundle, models)
                _forget_process(replica, "starting")
                replica.generation = 0  # a fresh agent: it is given every model again
            service.state = "deploying"
            service.reason = f"taken over from replica {previous}" if previous else "claimed"
            service.updated_at = utcnow()
            session.commit()
            logger.warning("service %s: agents taken over from replica %s", name, previous)

    @staticmethod
    def model_settings(service: Service) -> dict[str, Any]:
        """Each model's batching settings, from its first (active) version in the spec."""
        out: dict[str, Any] = {}
        for m in service.spec["models"]:
            out.setdefault(
                m["model"],
                {
                    "max_batch_size": m.get("max_batch_size"),
                    "max_queue_delay_ms": m.get("max_queue_delay_ms"),
                },
            )
        return out

    def _drop_foreign(self, mine: set[str], existing: set[str]) -> None:
        """End the agents of services this replica no longer owns (deleted through another
        replica, or claimed by another while this one was taken for dead); a deleted service's
        folder goes with them."""
        for key in [k for k in self._procs if k[0] not in mine]:
            self._terminate(key)
            self._followers.pop(key[0], None)
            logger.info("replica %s/%d ended: the service is no longer this replica's", *key)
            if key[0] not in existing:
                shutil.rmtree(self.service_dir(key[0]), ignore_errors=True)

    def _follow(self, name: str) -> None:
        """Start following the batch service's job, unless a thread already does."""
        follower = self._followers.get(name)
        if follower is not None and follower.alive():
            return
        follower = BatchFollower(
            self.ctx,
            name,
            self.service_dir(name),
            self.replica_dir(name, 0),
            self._lock,
            self._stop.is_set,
        )
        self._followers[name] = follower
        follower.start()

    def _stop_replicas(self, service: Service) -> None:
        """A finished batch service keeps no process running."""
        self._followers.pop(service.name, None)
        for replica in service.replicas:
            key = (service.name, replica.index)
            if key in self._procs:
                self._terminate(key)
            if replica.state != "stopped":
                _forget_process(replica, "stopped")

    def _keep_running(self, service: Service, replica: ServiceReplica) -> None:
        key = (service.name, replica.index)
        proc = self._procs.get(key)
        if proc is not None:
            code = proc.popen.poll() if proc.popen is not None else None
            alive = code is None and (proc.popen is not None or _runs(proc.pid, self._config(key)))
            if alive:
                if replica.grpc_port is None:
                    self._read_ports(key, replica, proc.pid)
                return
            del self._procs[key]
            replica.state = "crashed"
            replica.reason = f"agent exited with {code}" if code is not None else "agent is gone"
            replica.restarts += 1
            replica.pid = replica.grpc_port = replica.http_port = None
            delay = min(2.0 ** min(replica.restarts, 6), self.ctx.settings.services.backoff_max_s)
            self._backoff[key] = time.monotonic() + delay
            logger.warning("replica %s/%d: %s; restart in %.0f s", *key, replica.reason, delay)
            return
        if time.monotonic() < self._backoff.get(key, 0.0):
            return
        self._spawn(key, replica)

    def _config(self, key: tuple[str, int]) -> Path:
        return self.replica_dir(*key) / "agent.yaml"

    def _spawn(self, key: tuple[str, int], replica: ServiceReplica) -> None:
        folder = self.replica_dir(*key)
        (folder / "ports.json").unlink(missing_ok=True)
        with open(folder / "agent.log", "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self._config(key))],
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives a control plane killed with SIGKILL
            )
        self._procs[key] = _Process(popen.pid, popen)
        replica.pid = popen.pid
        replica.state = "starting"
        replica.grpc_port = replica.http_port = None
        replica.started_at = utcnow()
        logger.info("started replica %s/%d (pid %d)", *key, popen.pid)

    def _read_ports(self, key: tuple[str, int], replica: ServiceReplica, pid: int) -> None:
        try:
            ports = json.loads((self.replica_dir(*key) / "ports.json").read_text())
        except (OSError, ValueError):
            return  # not written yet
        if ports.get("pid") != pid:
            return
        replica.grpc_port = int(ports["grpc"])
        replica.http_port = int(ports["http"]) if ports.get("http") else None
        replica.state = "running"
        replica.reason = ""

    # --- models ------------------------------------------------------------------------------

    def view(self, session: Session, service: Service, replica: ServiceReplica) -> ReplicaView:
        """Whether the replica has its generation's models installed (or why one failed):
        every version the spec names, active and standby, by its package digest."""
        wanted = self.wanted(session, service)
        view = ReplicaView(wanted=wanted)
        if replica.generation != service.generation:
            return view
        by_digest = {
            t.deployment.package_digest: t
            for t in DeploymentService(session, self.ctx).device_targets(replica.device_id)
        }
        states = [by_digest[w.digest].state if w.digest in by_digest else "pending" for w in wanted]
        failed = [by_digest[w.digest] for w in wanted if w.digest in by_digest]
        failed = [t for t in failed if t.state == "failed"]
        if failed:
            view.failed = f"{replica.device_id}: {failed[0].reason or 'install failed'}"
        view.installed = all(s == "installed" for s in states)
        return view

    def wanted(self, session: Session, service: Service) -> list[WantedVersion]:
        """The spec's versions as deployments: per model, the first listed is active, the
        others stand by with their weights (the agent's traffic split gives the active one the
        rest)."""
        models = ModelService(session, self.ctx)
        out = []
        seen: set[str] = set()
        for m in service.spec["models"]:
            digest = models.get(m["model"], m["version"]).package_digest
            standby = m["model"] in seen
            seen.add(m["model"])
            if digest:
                weight = float(m.get("weight") or 0) if standby else 0.0
                out.append(WantedVersion(m["model"], m["version"], digest, standby, weight))
        return out

    def _roll_out(self, session: Session, service: Service, views: dict[int, ReplicaView]) -> None:
        """Give replicas the current models: fresh ones at once, the others one at a time."""
        behind = [r for r in service.replicas if r.generation != service.generation]
        if not behind:
            return
        updating = any(
            r.generation == service.generation and not views[r.index].installed
            for r in service.replicas
        )
        for replica in behind:
            if replica.generation != 0 and updating:
                continue
            self._give(session, service, replica, fresh=replica.generation == 0)
            if replica.generation != 0:
                updating = True
            replica.generation = service.generation
            views[replica.index] = ReplicaView(wanted=views[replica.index].wanted)

    def _give(
        self, session: Session, service: Service, replica: ServiceReplica, fresh: bool = False
    ) -> None:
        """Deploy what the replica lacks, model by model, and publish its desired state once.

        ``fresh``: an agent that holds nothing yet (new, or restarted by a replica that took
        the service over) gets every version again, whatever earlier deployments say.

        A standby deployment supersedes only earlier ones of its own version, so a weight change
        is one new standby deployment and the active version is left alone. An active one
        supersedes every deployment of the model, so when the active version changes, or a
        standby version leaves the spec, the model's whole set is deployed again, active first.
        """
        deployments = DeploymentService(session, self.ctx)
        current: dict[str, set[tuple[str, bool, float]]] = {}
        for t in deployments.device_targets(replica.device_id):
            dep = t.deployment
            if dep.action == "install":
                current.setdefault(t.model_name, set()).add(
                    (dep.package_digest, dep.standby, dep.weight)
                )
        by_model: dict[str, list[WantedVersion]] = {}
        for w in self.wanted(session, service):
            by_model.setdefault(w.model, []).append(w)
        created = False
        for name, versions in by_model.items():
            have = current.get(name, set())
            keys = [(w.digest, w.standby, w.weight) for w in versions]
            wanted_digests = {w.digest for w in versions}
            if fresh or keys[0] not in have or any(d not in wanted_digests for d, _, _ in have):
                todo = versions  # a new active version or one to drop: the whole set again
            else:
                todo = [w for w, key in zip(versions, keys, strict=True) if key not in have]
            for w in todo:
                deployments.create(
                    package_digest=w.digest,
                    package_name=None,
                    package_version=None,
                    device_id=replica.device_id,
                    selector=None,
                    standby=w.standby,
                    weight=w.weight,
                    publish=False,
                )
                created = True
        if created:
            deployments.publish([replica.device_id])
        logger.info(
            "replica %s/%d given generation %d", service.name, replica.index, service.generation
        )

    def _set_state(self, service: Service, views: dict[int, ReplicaView]) -> None:
        failed = next((v.failed for v in views.values() if v.failed), "")
        if failed:
            state, reason = "failed", failed
        elif all(r.state == "running" and views[r.index].installed for r in service.replicas):
            state, reason = "running", ""
        else:
            state = "deploying"
            reason = ", ".join(
                f"replica {r.index} {r.state}"
                + ("" if views[r.index].installed else ", installing")
                for r in service.replicas
                if not (r.state == "running" and views[r.index].installed)
            )
        if (state, reason) != (service.state, service.reason):
            service.state, service.reason = state, reason
            service.updated_at = utcnow()
            logger.info("service %s: %s %s", service.name, state, reason)

    # --- stopping ----------------------------------------------------------------------------

    def stop_service(self, name: str, indexes: list[int]) -> None:
        """End the service's replica processes (for a delete)."""
        with self._lock:
            for index in indexes:
                self._terminate((name, index))

    def _terminate(self, key: tuple[str, int]) -> None:
        proc = self._procs.pop(key, None)
        self._backoff.pop(key, None)
        if proc is None:
            return
        if proc.popen is None and not _runs(proc.pid, self._config(key)):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _alive(proc):
            time.sleep(0.05)
        if _alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.popen is not None:
                proc.popen.wait(timeout=5)
        logger.info("stopped replica %s/%d", *key)


def _forget_process(replica: ServiceReplica, state: str) -> None:
    replica.state = state
    replica.pid = replica.grpc_port = replica.http_port = None


def _alive(proc: _Process) -> bool:
    if proc.popen is not None:
        return proc.popen.poll() is None
    return pid_alive(proc.pid)


def _runs(pid: int, config: Path) -> bool:
    """Whether ``pid`` is an agent running ``config`` (not a reused pid of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(config).encode() in cmdline
