"""The job runner: training jobs as worker processes of the control plane.

One supervisor thread owns every job process. It wakes on a short tick (or when told that a job
was queued or canceled) and, under one lock:

1. reaps finished processes (``os.wait4``, which also gives the job's peak memory and CPU time),
   ends those past their deadline, and records exit status, metrics and the log tail;
2. starts queued jobs, oldest first, while fewer than ``training_max_concurrent`` run.

Each job runs in its own session (``start_new_session``), so it is the leader of a new process
group: cancel, timeout and shutdown send SIGTERM to the whole group, wait a grace period, then
SIGKILL the group, which reaches the data loaders and helper processes a script may start; no
orphan survives. (A process that deliberately starts its own session escapes, as with any
process-group based supervisor; containers or cgroups are the remedy, not this module.)

Work folder of a job (``<training_dir>/jobs/<id>/``): ``code/`` (a copy of the uploaded code, the
script's working directory), ``output/`` (``--train_url``: model, ``metrics.json``,
``tensorboard/``) and ``job.log`` (stdout and stderr together, unbuffered, followable live).

A control plane that restarts finds jobs still marked running: their supervisor is gone, so it
ends any process that is still there (identified by the job id in its environment, never by a
bare pid that may have been reused) and marks the job failed. Queued jobs simply run.

With ``training.executor = "ray"`` the same runner claims, times out, cancels and records jobs,
but each job's process runs in a Ray actor (``ray_executor.py``); the actor outlives a control
plane restart, so a restarted runner keeps supervising the job instead of failing it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.replicas import live_replicas
from control_plane.core.workers import default_mxnet_python, log_tail, worker_env
from control_plane.datasets.versions.service import VersionService
from control_plane.training import sdk
from control_plane.training.algorithms import BUILTIN
from control_plane.training.bucket import JobBucket, code_limits
from control_plane.training.models import TrainingJob
from control_plane.training.sdk import edge_training

if TYPE_CHECKING:
    from control_plane.training.ray_executor import RayExecutor, RayJob

logger = logging.getLogger(__name__)

ENV_MARKER = "EDGE_TRAINING_JOB_ID"
SDK_DIR = Path(sdk.__file__).parent
FINAL_STATES = ("succeeded", "failed", "canceled")
# Executor "ray": how often to try the cluster again while it does not answer.
JOIN_RETRY_S = 10.0


def _last_error_line(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        if line.strip():
            return line.strip()[:500]
    return ""


def hyperparameter_args(hp: dict[str, Any]) -> list[str]:
    out = []
    for k, v in sorted(hp.items()):
        value = ("true" if v else "false") if isinstance(v, bool) else str(v)
        out.append(f"--{k}={value}")
    return out


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _marked(pid: int, job_id: str) -> bool:
    """Whether process ``pid`` is this job's (its environment carries the job id)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{ENV_MARKER}={job_id}".encode() in environ.split(b"\0")


@dataclass
class _Running:
    job_id: str
    # The local process, or (executor "ray") the job's actor.
    proc: Popen[bytes] | None
    deadline: float
    work: Path
    # None, or why the runner is ending it: (final state, reason).
    ending: tuple[str, str] | None = None
    ray: RayJob | None = None


# (exit code, peak resident memory in bytes, CPU seconds); the last two None when unknown.
Outcome = tuple[int, int | None, float | None]


def claim_queued_jobs(session: Session, limit: int, replica: str | None = None) -> list[str]:
    """Take up to ``limit`` queued jobs, oldest first, for this runner; returns their ids.

    Several control planes may share one database, each with its runner: a job must start
    exactly once. On PostgreSQL the queued rows are read ``FOR UPDATE SKIP LOCKED``, so two
    runners claiming at once take different jobs instead of waiting for each other; the claim
    itself is a conditional update (``queued`` -> ``running``, counted by rowcount), which also
    holds on SQLite, where the lock clause is ignored and writers are serialised.
    """
    ids = session.scalars(
        select(TrainingJob.id)
        .where(TrainingJob.state == "queued")
        .order_by(TrainingJob.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    claimed = []
    for job_id in ids:
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.state == "queued")
            .values(state="running", started_at=utcnow(), pid=None, replica=replica)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(job_id)
    session.commit()
    return claimed


def fail_jobs_of_dead_replicas(session: Session, lease_s: float) -> list[str]:
    """Mark failed the running jobs of replicas whose heartbeat stopped; returns their ids.

    Their runner is gone, so nothing else would ever finish them. A job process still alive on
    this machine (replicas on one host) is ended too, recognised by the job id in its
    environment, never by a bare pid.
    """
    alive = live_replicas(session, lease_s)
    jobs = session.scalars(
        select(TrainingJob).where(
            TrainingJob.state == "running",
            TrainingJob.replica.is_not(None),
            TrainingJob.replica.not_in(alive),
        )
    ).all()
    for job in jobs:
        if job.pid and _marked(job.pid, job.id):
            kill_group(job.pid, signal.SIGKILL)
        job.state = "failed"
        job.failure_reason = f"replica {job.replica} stopped while the job ran (no heartbeat)"
        job.finished_at = utcnow()
        job.pid = None
        logger.warning("job %s: replica %s stopped; marked failed", job.id, job.replica)
    session.commit()
    return [j.id for j in jobs]


def data_url_of(session: Session, ctx: AppContext, job: TrainingJob) -> str:
    """The folder (or file) the job gets as ``--data_url``."""
    if job.dataset_id and job.dataset_version:
        versions = VersionService(session, ctx)
        return str(versions.path(versions.get(job.dataset_id, job.dataset_version)).resolve())
    return job.data_path or ""


class JobFolders:
    """Where a job's files live under the training folder (code by digest, work per job)."""

    def __init__(self, root: Path) -> None:
        # Absolute: a job's process runs in its own folder, so a relative root (the default
        # data_dir is ``var/control-plane``) would put its --train_url under that folder.
        self.root = root.absolute()

    def work_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def code_dir(self, code_id: str) -> Path:
        return self.root / "code" / code_id

    def log_path(self, job_id: str) -> Path:
        return self.work_dir(job_id) / "job.log"

    def output_dir(self, job_id: str) -> Path:
        return self.work_dir(job_id) / "output"


class JobRunner(JobFolders):
    def __init__(self, ctx: AppContext, tick_s: float = 0.5, grace_s: float = 5.0) -> None:
        super().__init__(ctx.settings.resolved_training_dir)
        self.ctx = ctx
        self.tick_s = tick_s
        self.grace_s = grace_s
        self.lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.replica = ctx.settings.replicas.id
        self._next_takeover = 0.0
        self.executor: RayExecutor | None = None
        self.bucket = JobBucket.of(ctx.objects)
        # Executor "ray": whether the cluster was joined; until then jobs stay queued.
        self._ray_joined = False
        self._next_join = 0.0
        if ctx.settings.training.executor == "ray":
            from control_plane.training.ray_executor import RayExecutor

            self.executor = RayExecutor(ctx.settings.training)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.executor is None or self._join_ray(time.monotonic()):
            self.recover()
        self._thread = threading.Thread(target=self._loop, name="training-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End every running job (marked failed: the control plane stopped) and the thread.

        On Ray the jobs keep running: their actors outlive this process, and the next start
        finds them again (``recover``).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self.lock:
            if self.executor is not None:
                self._running.clear()
                self.executor.disconnect()
                self._ray_joined = False
                return
            for run in list(self._running.values()):
                run.ending = ("failed", "the control plane stopped while the job ran")
                self._end(run)

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> None:
        """Jobs left running by an earlier control plane: end their processes, mark them failed.

        With replicas, only this replica's own jobs (an earlier run of the same replica id):
        the others' jobs are theirs, or, once their heartbeat stops, ``fail_jobs_of_dead``'s.
        """
        with self.ctx.sessions() as session:
            query = select(TrainingJob).where(TrainingJob.state == "running")
            if self.replica is not None:
                query = query.where(TrainingJob.replica == self.replica)
            jobs = session.scalars(query).all()
            for job in jobs:
                if self.executor is not None:
                    self._recover_ray(session, job)
                    continue
                if job.pid and _marked(job.pid, job.id):
                    logger.warning("ending orphaned process group %d of job %s", job.pid, job.id)
                    kill_group(job.pid, signal.SIGKILL)
                job.state = "failed"
                job.failure_reason = "the control plane restarted while the job ran (orphaned)"
                job.log_tail = log_tail(self.log_path(job.id))
                job.finished_at = utcnow()
                job.pid = None
                logger.warning("job %s was orphaned by a restart: marked failed", job.id)
            session.commit()

    def _recover_ray(self, session: Session, job: TrainingJob) -> None:
        """Keep supervising a job whose Ray actor is still there, or mark it failed."""
        assert self.executor is not None
        found = self.executor.find(job.id)
        if found is None:
            job.state = "failed"
            job.failure_reason = (
                "the control plane restarted while the job ran and its Ray actor is gone"
            )
            job.log_tail = log_tail(self.log_path(job.id))
            job.finished_at = utcnow()
            job.pid = None
            logger.warning("job %s: no Ray actor after a restart: marked failed", job.id)
            return
        found.pid = job.pid
        work = self.work_dir(job.id)
        try:
            argv, cwd = self.command(job, data_url_of(session, self.ctx, job), work)
            env = self.environment(job, work)
        except Exception as exc:  # its input is gone: the job's start cannot be repeated
            logger.warning("job %s: cannot rebuild its command: %s", job.id, exc)
        else:
            self.executor.resend_start(found, argv, str(cwd), env, str(self.log_path(job.id)))
        started = job.started_at or utcnow()
        if started.tzinfo is None:  # SQLite hands back naive UTC times
            started = started.replace(tzinfo=dt.UTC)
        elapsed = (utcnow() - started).total_seconds()
        deadline = time.monotonic() + max(0.0, job.timeout_s - elapsed)
        self._running[job.id] = _Running(job.id, None, deadline, self.work_dir(job.id), ray=found)
        logger.info("job %s: found its Ray actor again after a restart", job.id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("training runner tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _join_ray(self, now: float) -> bool:
        """Join the Ray cluster if not yet done (at most every ``JOIN_RETRY_S``)."""
        assert self.executor is not None
        if not self._ray_joined and now >= self._next_join:
            self._next_join = now + JOIN_RETRY_S
            self._ray_joined = self.executor.connect()
        return self._ray_joined

    def tick(self) -> None:
        with self.lock:
            now = time.monotonic()
            if self.executor is not None and not self._ray_joined:
                if not self._join_ray(now):
                    return  # jobs wait, queued, until the cluster answers
                self.recover()
            if self.replica is not None:
                self._replica_duties(now)
            for run in list(self._running.values()):
                if run.ending is None and now > run.deadline:
                    timeout = self._job_timeout(run.job_id)
                    run.ending = ("failed", f"timed out after {timeout:g}s")
                if run.ending is not None:
                    self._end(run)
                else:
                    self._reap(run)
            if self._stop.is_set():
                return
            free = self.ctx.settings.training.max_concurrent - len(self._running)
            if free > 0:
                with self.ctx.sessions() as session:
                    claimed = claim_queued_jobs(session, free, self.replica)
                for job_id in claimed:
                    self._launch(job_id)

    # --- replicas ----------------------------------------------------------------------------

    def _replica_duties(self, now: float) -> None:
        """Cancels asked through another replica; jobs of replicas that stopped heartbeating."""
        if self._running:
            with self.ctx.sessions() as session:
                asked = session.scalars(
                    select(TrainingJob.id).where(
                        TrainingJob.id.in_(list(self._running)), TrainingJob.cancel_requested
                    )
                ).all()
            for job_id in asked:
                run = self._running[job_id]
                if run.ending is None:
                    run.ending = ("canceled", "canceled by request")
        if now >= self._next_takeover:
            self._next_takeover = now + self.ctx.settings.replicas.heartbeat_s
            with self.ctx.sessions() as session:
                failed = fail_jobs_of_dead_replicas(session, self.ctx.settings.replicas.lease_s)
            if self.executor is not None:
                for job_id in failed:
                    self.executor.end_named(job_id, self.grace_s)

    # --- cancel ------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns its state afterwards. Waits for a running
        job's process group to be gone (at most the grace period plus a moment)."""
        with self.lock:
            run = self._running.get(job_id)
            if run is not None:
                run.ending = ("canceled", "canceled by request")
                self._end(run)
                return "canceled"
            with self.ctx.sessions() as session:
                job = session.get(TrainingJob, job_id)
                if job is None:
                    return "missing"
                if job.state == "queued":
                    job.state = "canceled"
                    job.failure_reason = "canceled before it started"
                    job.finished_at = utcnow()
                    session.commit()
                elif job.state == "running" and job.replica != self.replica:
                    # Another replica runs it: its runner sees the request on its next tick.
                    job.cancel_requested = True
                    session.commit()
                return job.state

    # --- launching ---------------------------------------------------------------------------

    def _job_timeout(self, job_id: str) -> float:
        with self.ctx.sessions() as session:
            job = session.get(TrainingJob, job_id)
            return job.timeout_s if job else 0.0

    def command(self, job: TrainingJob, data_url: str, work: Path) -> tuple[list[str], Path]:
        """The job's argv and working directory (ModelArts-style arguments)."""
        out = work / "output"
        args = [f"--data_url={data_url}", f"--train_url={out}"]
        args += hyperparameter_args(job.hyperparameters)
        if job.algorithm in BUILTIN:
            return [sys.executable, "-m", BUILTIN[job.algorithm].module, *args], work
        code = work / "code"
        boot = code / (job.boot_file or "")
        python = str(sys.executable)
        if job.framework == "mxnet":
            python = str(self.ctx.settings.training.mxnet_python or default_mxnet_python())
        return [python, str(boot), *args], code

    def environment(self, job: TrainingJob, work: Path) -> dict[str, str]:
        # The control plane's own packages too (built-ins import control_plane), but not for MXNet:
        # its environment has its own, older numpy and protobuf.
        env = worker_env(str(SDK_DIR), with_repo=job.framework != "mxnet")
        env.update(
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            **{
                ENV_MARKER: job.id,
                "EDGE_TRAINING_TENSORBOARD_DIR": str(work / "output" / "tensorboard"),
            },
        )
        return env

    def _launch(self, job_id: str) -> None:
        """Start a job this runner claimed (``claim_queued_jobs``: running, no pid yet)."""
        with self.ctx.sessions() as session:
            job = session.get(TrainingJob, job_id)
            if job is None or job.state != "running" or job.pid is not None:
                return
            work = self.work_dir(job.id)
            log = self.log_path(job.id)
            try:
                data_url = data_url_of(session, self.ctx, job)
                work.mkdir(parents=True, exist_ok=True)
                (work / "output").mkdir(exist_ok=True)
                if job.code_id:
                    if not self.code_dir(job.code_id).is_dir() and self.bucket is not None:
                        self.bucket.fetch_code(
                            job.code_id, self.code_dir(job.code_id), code_limits(self.ctx)
                        )
                    shutil.rmtree(work / "code", ignore_errors=True)
                    shutil.copytree(self.code_dir(job.code_id), work / "code")
                argv, cwd = self.command(job, data_url, work)
                if job.framework == "mxnet" and not Path(argv[0]).exists():
                    raise RuntimeError(
                        f"the MXNet environment is missing ({argv[0]}); create it with "
                        "scripts/setup-mxnet or set CONTROL_PLANE_MXNET_PYTHON"
                    )
                with open(log, "ab") as log_file:
                    log_file.write(f"$ {' '.join(argv)}\n".encode())
                if self.executor is not None:
                    ray_job = self.executor.launch(
                        job.id,
                        argv,
                        str(cwd),
                        self.environment(job, work),
                        str(log),
                        job.resources,
                    )
                    self._running[job.id] = _Running(
                        job.id, None, time.monotonic() + job.timeout_s, work, ray=ray_job
                    )
                    logger.info("job %s (%s v%d) sent to Ray", job.id, job.name, job.version)
                    return
                with open(log, "ab") as log_file:
                    proc = Popen(
                        argv,
                        cwd=cwd,
                        env=self.environment(job, work),
                        stdin=open(os.devnull, "rb"),  # noqa: SIM115 - closed by Popen's child
                        stdout=log_file,
                        stderr=log_file,
                        start_new_session=True,
                    )
            except Exception as exc:
                logger.warning("job %s could not start: %s", job.id, exc)
                job.state = "failed"
                job.failure_reason = f"could not start: {exc}"
                job.finished_at = utcnow()
                job.log_tail = log_tail(log)
                session.commit()
                return
            job.state = "running"
            job.pid = proc.pid
            job.started_at = utcnow()
            session.commit()
            self._running[job.id] = _Running(job.id, proc, time.monotonic() + job.timeout_s, work)
            logger.info("job %s (%s v%d) started: pid %d", job.id, job.name, job.version, proc.pid)

    # --- ending ------------------------------------------------------------------------------

    def _wait(self, run: _Running, block: bool) -> Outcome | None:
        """Reap the job process: ``(exit code, peak rss, cpu seconds)``, or None while it runs."""
        assert run.proc is not None
        if run.proc.returncode is not None:
            return run.proc.returncode, None, None
        try:
            pid, status, usage = os.wait4(run.proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            run.proc.returncode = -1
            return -1, None, None
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        run.proc.returncode = code
        return code, int(usage.ru_maxrss) * 1024, float(usage.ru_utime + usage.ru_stime)

    def _reap(self, run: _Running) -> None:
        if run.ray is not None:
            self._reap_ray(run)
            return
        assert run.proc is not None
        done = self._wait(run, block=False)
        if done is not None:
            # The leader is gone; helpers it left in its group go with it.
            kill_group(run.proc.pid, signal.SIGKILL)
            self._finish(run, *done)

    def _reap_ray(self, run: _Running) -> None:
        from control_plane.training.ray_executor import RayJobLost

        assert self.executor is not None and run.ray is not None
        pid_known = run.ray.pid
        try:
            done = self.executor.poll(run.ray)
        except RayJobLost as exc:
            self.executor.release(run.ray)
            run.ending = ("failed", str(exc))
            self._finish(run, -1, None, None)
            return
        if run.ray.pid is not None and pid_known is None:
            with self.ctx.sessions() as session:
                job = session.get(TrainingJob, run.job_id)
                if job is not None:
                    job.pid = run.ray.pid
                    session.commit()
        if done is not None:
            self.executor.release(run.ray)
            self._finish(run, *done)

    def _end(self, run: _Running) -> None:
        """Stop the whole process group (TERM, grace, KILL) and record the outcome."""
        if run.ray is not None:
            assert self.executor is not None
            outcome = self.executor.stop(run.ray, self.grace_s)
            self._finish(run, *(outcome or (-1, None, None)))
            return
        assert run.proc is not None
        kill_group(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        done = self._wait(run, block=False)
        while done is None and time.monotonic() < deadline:
            time.sleep(0.05)
            done = self._wait(run, block=False)
        kill_group(run.proc.pid, signal.SIGKILL)
        if done is None:
            done = self._wait(run, block=True)
        self._finish(run, *done)

    def _finish(self, run: _Running, code: int, rss: int | None, cpu: float | None) -> None:
        self._running.pop(run.job_id, None)
        tail = log_tail(run.work / "job.log")
        metrics = None
        metrics_file = run.work / "output" / edge_training.METRICS_FILE
        if metrics_file.is_file():
            try:
                metrics = json.loads(metrics_file.read_text())
            except (OSError, ValueError) as exc:
                logger.warning("job %s wrote unreadable metrics: %s", run.job_id, exc)
        if run.ending is not None:
            state, reason = run.ending
        elif code == 0:
            state, reason = "succeeded", ""
        elif code < 0:
            state = "failed"
            reason = f"killed by signal {signal.Signals(-code).name}: {_last_error_line(tail)}"
        else:
            state, reason = "failed", f"exit status {code}: {_last_error_line(tail)}"
        if self.bucket is not None and run.work.is_dir():
            # Before the final state is recorded: a replica that sees it finds the outputs.
            try:
                self.bucket.put_outputs(run.job_id, run.work)
            except Exception as exc:
                logger.warning("job %s: outputs not stored: %s", run.job_id, exc)
                state = "failed"
                reason = f"its outputs could not be stored in the object store: {exc}"
        with self.ctx.sessions() as session:
            job = session.get(TrainingJob, run.job_id)
            if job is None:
                return
            job.state = state
            job.exit_code = code
            job.failure_reason = reason
            job.log_tail = tail
            job.metrics = metrics
            job.pid = None
            job.finished_at = utcnow()
            if rss is not None:
                job.peak_rss_bytes = rss
            if cpu is not None:
                job.cpu_seconds = cpu
            session.commit()
        logger.info("job %s %s (exit %s) %s", run.job_id, state, code, reason)
