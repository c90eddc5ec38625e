"""Training jobs on a Ray cluster: the ``ray`` executor of the job runner.

With ``training.executor = "ray"`` the runner (``runner.py``) still claims queued jobs, prepares
their work folders and records their end; only the process itself runs elsewhere: in a Ray actor
(``ray_worker.JobProcess``) created for the job, with the job's resources as the actor's resource
request (``ray_num_cpus``, ``ray_num_gpus``, ``ray_memory_bytes``), so Ray places it on a node
with room and holds it queued when none has.

Why an actor rather than a task: a task belongs to the driver that submitted it and dies with
it, so a restarted control plane could never find it again. A *detached, named* actor
(``job-<id>`` in ``ray_namespace``) outlives the control plane; on restart the runner looks each
running job's actor up by name and keeps supervising it, or marks the job failed when the actor
is gone. Only ``ray`` core is used (``ray.init(address=...)``, actors, ``ray.kill``): no
dashboard and no job-submission API, which need ``ray[default]``.

Every call here is non-blocking or bounded by a timeout: the runner's tick must never wait for a
busy cluster.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from control_plane.core.settings import TrainingSettings
from control_plane.training import ray_worker
from control_plane.training.ray_worker import Outcome

logger = logging.getLogger(__name__)

SETTINGS_PREFIX = "CONTROL_PLANE_"

# How long the cluster's address may take to accept a connection.
CONNECT_TIMEOUT_S = 5.0
# How long a placed actor may take to answer a start (it only forks): longer means unplaced.
START_ANSWER_S = 2.0
# How long a call that should answer at once (stop, lookup) may take before the runner gives up.
CALL_TIMEOUT_S = 30.0


class RayJobLost(Exception):
    """The job's actor is gone (node lost, actor killed, or it never could start)."""


@dataclass
class RayJob:
    """The runner's handle on one job's actor and its outstanding calls."""

    job_id: str
    actor: Any
    start_ref: Any = None
    poll_ref: Any = None
    pid: int | None = None


def actor_name(job_id: str) -> str:
    return f"job-{job_id}"


class RayExecutor:
    """Connects to the cluster once and starts, polls, stops and finds job actors."""

    def __init__(self, settings: TrainingSettings) -> None:
        import ray  # the optional `ray` extra: imported only when this executor is chosen

        self.ray = ray
        self.settings = settings
        self.namespace = settings.ray_namespace
        self._connected_here = False
        # The cluster need not hold a copy of the control plane to host the actor.
        ray.cloudpickle.register_pickle_by_value(ray_worker)
        self._actor_class = ray.remote(ray_worker.JobProcess)

    def connect(self) -> bool:
        """Join the cluster; False (logged) when its address does not answer.

        ``ray.init`` retries an unreachable address for minutes, so the address is tried with a
        plain TCP connection first: the runner then keeps jobs queued and tries again later,
        instead of hanging the control plane's start.
        """
        if self.ray.is_initialized():
            return True
        address = self.settings.ray_address
        if address and ":" in address and "://" not in address:
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            except (OSError, ValueError) as exc:
                logger.error("training on Ray: cannot reach the cluster at %s: %s", address, exc)
                return False
        self.ray.init(
            address=self.settings.ray_address,
            namespace=self.namespace,
            log_to_driver=False,
            configure_logging=False,
        )
        self._connected_here = True
        logger.info("training on Ray at %s", self.settings.ray_address or "a local instance")
        return True

    def disconnect(self) -> None:
        """Leave the cluster; the job actors (detached) keep running for the next start."""
        if self._connected_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._connected_here = False

    # --- one job ---------------------------------------------------------------------------

    def launch(
        self,
        job_id: str,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        log_path: str,
        resources: dict[str, Any] | None = None,
    ) -> RayJob:
        options: dict[str, Any] = {
            "name": actor_name(job_id),
            "namespace": self.namespace,
            "lifetime": "detached",
            "max_restarts": 0,
            **self.resource_options(resources),
        }
        actor = self._actor_class.options(**options).remote()
        job = RayJob(job_id, actor)
        job.start_ref = actor.start.remote(argv, cwd, _job_env(env), log_path)
        return job

    def resource_options(self, resources: dict[str, Any] | None) -> dict[str, Any]:
        """The actor's Ray resource request: the job's own ``{cpus, gpus, memory_mb}`` where it
        names them, the settings' values for the rest."""
        asked = resources or {}
        options: dict[str, Any] = {
            "num_cpus": asked.get("cpus", self.settings.ray_num_cpus),
            "num_gpus": asked.get("gpus", self.settings.ray_num_gpus),
        }
        if asked.get("memory_mb") is not None:
            options["memory"] = int(asked["memory_mb"]) << 20
        elif self.settings.ray_memory_bytes is not None:
            options["memory"] = self.settings.ray_memory_bytes
        return options

    def find(self, job_id: str) -> RayJob | None:
        """The running job's actor, found by name (after a restart), or None when it is gone."""
        try:
            actor = self.ray.get_actor(actor_name(job_id), namespace=self.namespace)
        except ValueError:
            return None
        return RayJob(job_id, actor)

    def resend_start(
        self, job: RayJob, argv: list[str], cwd: str, env: dict[str, str], log_path: str
    ) -> None:
        """Send a found job's start again: the actor starts only once (it answers with the
        running pid), but a start sent by a control plane that died before the actor was
        placed may have been dropped with its sender, leaving an actor with nothing running."""
        job.start_ref = job.actor.start.remote(argv, cwd, _job_env(env), log_path)

    def poll(self, job: RayJob) -> Outcome | None:
        """The outcome once the job's process ended, else None; never waits.

        Raises ``RayJobLost`` when the actor died or its command could not start.
        """
        ray = self.ray
        try:
            if job.start_ref is not None:
                ready, _ = ray.wait([job.start_ref], timeout=0)
                if not ready:
                    return None  # still waiting for resources, or starting
                started = ray.get(job.start_ref)
                job.start_ref = None
                if isinstance(started, int):
                    job.pid = started
            if job.poll_ref is None:
                job.poll_ref = job.actor.poll.remote()
            ready, _ = ray.wait([job.poll_ref], timeout=0)
            if not ready:
                return None
            outcome: Outcome | None = ray.get(job.poll_ref)
            job.poll_ref = None
            return outcome
        except ray.exceptions.RayActorError as exc:
            raise RayJobLost(f"the job's Ray actor died: {_first_line(exc)}") from exc
        except ray.exceptions.RayTaskError as exc:
            raise RayJobLost(f"could not start on Ray: {_first_line(exc)}") from exc

    def stop(self, job: RayJob, grace_s: float) -> Outcome | None:
        """End the job's process group on its node; None when the actor could not answer
        (never started, or died). The actor itself is killed either way."""
        ray = self.ray
        try:
            if (
                job.start_ref is not None
                and not ray.wait([job.start_ref], timeout=START_ANSWER_S)[0]
            ):
                # Still waiting for resources: a stop call would queue behind the start.
                # Killing the actor is enough: a leader it may just have started dies with it
                # (PR_SET_PDEATHSIG).
                return None
            outcome: Outcome = ray.get(
                job.actor.stop.remote(grace_s), timeout=grace_s + CALL_TIMEOUT_S
            )
            return outcome
        except (ray.exceptions.RayError, TimeoutError) as exc:
            logger.warning("job %s: the Ray actor did not stop cleanly: %s", job.job_id, exc)
            return None
        finally:
            self.release(job)

    def release(self, job: RayJob) -> None:
        """Kill the job's actor (its resources return to the cluster)."""
        try:
            self.ray.kill(job.actor, no_restart=True)
        except Exception as exc:  # already gone: nothing to release
            logger.debug("job %s: actor already gone: %s", job.job_id, exc)

    def end_named(self, job_id: str, grace_s: float) -> None:
        """End a job known only by name (its replica stopped): its process group, its actor."""
        found = self.find(job_id)
        if found is not None:
            self.stop(found, grace_s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


def _job_env(env: dict[str, str]) -> dict[str, str]:
    """The job's environment without the control plane's own settings (secrets among them):
    call arguments are stored by the cluster, and no job needs them."""
    return {k: v for k, v in env.items() if not k.startswith(SETTINGS_PREFIX)}
