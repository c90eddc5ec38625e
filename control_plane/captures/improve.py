"""From reviewed captures to a better model on the same edge service, in four steps that each
work alone (the API's ``/captures/publish``, ``/retrain``, ``/register``, ``/canary``) and
together as one improvement that an engine thread walks through:

1. publish: the reviewed captures of the service (accepted or corrected, not yet published)
   join the dataset the current model was trained on, with the reviewers' labels, and the next
   version of that dataset is published (same train ratio and seed as the current model's);
2. train: the job that made the current model runs again as its next version, on that dataset
   version (same algorithm or script, same hyperparameters);
3. register: its model becomes the model's next version, converted with the current version's
   settings (targets, parity policy, processing);
4. rollout: the edge service moves to it, which opens its staged rollout: canary first, with
   the service's health gates (``services/rollouts/``).

An improvement's whole state is its row (``steps``), written with each step, so it resumes after
a restart. With several replicas, one walks each improvement: its *owner*, the replica that
started it. A step commits along the way (a dataset version, a job), so a row lock alone could
not keep a second replica from repeating it; ownership does. When the owner's heartbeat stops
(``core/replicas.py``), the first survivor to claim the row carries on from the recorded step
(one conditional ``UPDATE``: two survivors cannot both win).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from control_plane.captures.models import Capture, Improvement
from control_plane.captures.schemas import PublishResult
from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, ControlPlaneError, InvalidRequest, NotFound
from control_plane.core.replicas import live_replicas
from control_plane.datasets.schemas import AnnotationIn, VersionCreate
from control_plane.datasets.service import DatasetService
from control_plane.datasets.versions.service import VersionService
from control_plane.registry.schemas import ModelRegister
from control_plane.registry.service import ModelService
from control_plane.services.schemas import ServiceModel, ServiceUpdate
from control_plane.services.service import ServiceManager
from control_plane.training.schemas import JobCreate
from control_plane.training.service import TrainingService

logger = logging.getLogger(__name__)

REVIEWED = ("accepted", "corrected")
STEPS = ("publish", "train", "register", "rollout")
#: How often the engine looks at running improvements.
TICK_S = 1.0


@dataclass(frozen=True)
class Current:
    """What an edge service runs now and what made it."""

    service: str
    model: str
    version: str
    job_id: str
    dataset_id: str
    dataset_version: str


class Improver:
    """Each step of an improvement, over the services that do the work."""

    def __init__(
        self,
        session: Session,
        ctx: AppContext,
        training: TrainingService,
        models: ModelService,
        services: ServiceManager,
    ) -> None:
        self.session = session
        self.ctx = ctx
        self.training = training
        self.models = models
        self.services = services

    def current(self, service_name: str) -> Current:
        service = self.services.get(service_name)
        if service.type != "edge":
            raise InvalidRequest(f"service {service_name} is not an edge service")
        m = service.spec["models"][0]
        version = self.services.edge_version(service)
        try:
            mv = self.models.get(m["model"], version)
        except NotFound:
            raise InvalidRequest(
                f"{m['model']} version {version} is not in the model registry (an uploaded "
                "package): an improvement re-runs the training job that made the model"
            ) from None
        if not mv.job_id:
            raise InvalidRequest(
                f"model {mv.name} version {mv.version} was not made by a training job"
            )
        job = self.training.get(mv.job_id)
        if not job.dataset_id or not job.dataset_version:
            raise InvalidRequest(f"job {job.id} did not train on a dataset version")
        return Current(
            service_name, mv.name, mv.version, job.id, job.dataset_id, job.dataset_version
        )

    # --- 1. publish ----------------------------------------------------------------------------

    def publish(self, service_name: str) -> PublishResult:
        cur = self.current(service_name)
        datasets = DatasetService(self.session, self.ctx)
        versions = VersionService(self.session, self.ctx)
        pending_here = self.session.scalar(
            select(Capture.id).where(
                Capture.dataset_id == cur.dataset_id, Capture.state == "pending"
            )
        )
        if pending_here is not None:
            raise Conflict(
                f"captures in the training dataset {cur.dataset_id} are still pending review; "
                "review or drop them first (their model pre-labels would be published)"
            )
        reviewed = list(
            self.session.scalars(
                select(Capture)
                .where(
                    Capture.service_name == service_name,
                    Capture.state.in_(REVIEWED),
                    Capture.published_in.is_(None),
                )
                .order_by(Capture.received_at)
            ).all()
        )
        if not reviewed:
            raise InvalidRequest(f"service {service_name} has no reviewed captures to publish")
        for c in reviewed:
            if c.dataset_id == cur.dataset_id or c.sample_id is None:
                continue
            path, _ = datasets.sample_file(c.dataset_id, c.sample_id)
            sample = datasets.sample(c.dataset_id, c.sample_id)
            ann = AnnotationIn(label=c.label, source="person", creator=c.reviewed_by)
            datasets.add_sample(cur.dataset_id, path.read_bytes(), sample.source_name, ann)
        self.session.commit()
        base = versions.get(cur.dataset_id, cur.dataset_version)
        spec = VersionCreate(
            train_ratio=base.train_ratio,
            seed=base.seed,
            description=f"{cur.dataset_version} + {len(reviewed)} reviewed capture(s) of "
            f"edge service {service_name}",
        )
        version = versions.publish(cur.dataset_id, spec)
        for c in reviewed:
            c.published_in = f"{cur.dataset_id}/{version.name}"
        self.session.commit()
        logger.info(
            "published %s/%s with %d reviewed captures of %s",
            cur.dataset_id,
            version.name,
            len(reviewed),
            service_name,
        )
        return PublishResult(
            dataset_id=cur.dataset_id,
            version=version.name,
            captures=len(reviewed),
            sample_count=version.sample_count,
        )

    # --- 2. train ------------------------------------------------------------------------------

    def retrain(self, service_name: str, dataset_version: str | None = None) -> Any:
        """The current model's job, again, as its next version on ``dataset_version`` (default
        the training dataset's latest); returns the queued job."""
        cur = self.current(service_name)
        versions = VersionService(self.session, self.ctx)
        if dataset_version is None:
            published = versions.list(cur.dataset_id)
            if not published:
                raise InvalidRequest(f"dataset {cur.dataset_id} has no published version")
            dataset_version = max(published, key=lambda v: v.id).name
        versions.get(cur.dataset_id, dataset_version)
        old = self.training.get(cur.job_id)
        spec = JobCreate(
            name=old.name,
            description=f"re-run of {old.name} v{old.version} on {dataset_version} "
            f"(edge service {service_name})",
            algorithm=old.algorithm,
            framework=old.framework,  # type: ignore[arg-type]
            dataset_id=cur.dataset_id,
            dataset_version=dataset_version,
            code_id=old.code_id,
            boot_file=old.boot_file,
            hyperparameters=dict(old.hyperparameters),
            timeout_s=old.timeout_s,
        )
        latest = max(self.training.list(name=old.name), key=lambda j: j.version)
        return self.training.create(spec, parent=latest)

    # --- 3. register ---------------------------------------------------------------------------

    def register(self, service_name: str, job_id: str) -> Any:
        """The job's model as the current model's next version, converted like it."""
        cur = self.current(service_name)
        mv = self.models.get(cur.model, cur.version)
        conv = mv.conversion or {}
        spec = ModelRegister(
            name=mv.name,
            job_id=job_id,
            description=f"improved from version {mv.version} with reviewed device captures "
            f"(edge service {service_name})",
            targets=conv.get("targets"),
            on_parity_fail=conv.get("on_parity_fail") or "drop",
            input_shapes=conv.get("input_shapes"),
            labels=conv.get("labels") if conv.get("labels_from") == "request" else None,
            preprocessing=conv.get("preprocessing"),
            postprocessing=conv.get("postprocessing"),
        )
        return self.models.register_job(spec)

    # --- 4. canary -----------------------------------------------------------------------------

    def canary(self, service_name: str, version: str) -> Any:
        """Move the edge service to ``version``: its staged rollout starts with the canary."""
        cur = self.current(service_name)
        change = ServiceUpdate(models=[ServiceModel(model=cur.model, version=version)])
        return self.services.update(service_name, change)

    # --- the whole loop ------------------------------------------------------------------------

    def start(self, service_name: str, user: str) -> Improvement:
        cur = self.current(service_name)
        running = self.session.scalar(
            select(Improvement.id).where(
                Improvement.service_name == service_name, Improvement.state == "running"
            )
        )
        if running is not None:
            raise Conflict(f"improvement {running} of {service_name} is still running")
        reviewed = self.session.scalar(
            select(Capture.id).where(
                Capture.service_name == service_name,
                Capture.state.in_(REVIEWED),
                Capture.published_in.is_(None),
            )
        )
        if reviewed is None:
            raise InvalidRequest(f"service {service_name} has no reviewed captures to publish")
        imp = Improvement(
            id=f"imp-{secrets.token_hex(6)}",
            service_name=service_name,
            model=cur.model,
            from_version=cur.version,
            state="running",
            step="publish",
            steps={},
            error="",
            created_by=user,
            owner=self.ctx.settings.replicas.id,
        )
        self.session.add(imp)
        self.session.commit()
        return imp

    def tick(self, imp: Improvement) -> None:
        """One step forward (or a wait on training or conversion); errors fail it."""
        try:
            self._step(imp)
        except ControlPlaneError as exc:
            self.session.rollback()
            imp.state, imp.error = "failed", f"{imp.step}: {exc}"
            logger.warning("improvement %s failed at %s: %s", imp.id, imp.step, exc)
        imp.updated_at = utcnow()
        flag_modified(imp, "steps")
        self.session.commit()

    def _step(self, imp: Improvement) -> None:
        steps = dict(imp.steps)
        if imp.step == "publish":
            steps["publish"] = self.publish(imp.service_name).model_dump()
            imp.step = "train"
        elif imp.step == "train":
            if "train" not in steps:
                job = self.retrain(imp.service_name, steps["publish"]["version"])
                steps["train"] = {"job_id": job.id, "state": job.state}
            else:
                job = self.training.get(steps["train"]["job_id"])
                steps["train"]["state"] = job.state
                if job.state == "succeeded":
                    imp.step = "register"
                elif job.state in ("failed", "canceled"):
                    raise InvalidRequest(f"job {job.id} {job.state}: {job.failure_reason}")
        elif imp.step == "register":
            if "register" not in steps:
                mv = self.register(imp.service_name, steps["train"]["job_id"])
                steps["register"] = {"version": mv.version, "state": mv.state}
            else:
                mv = self.models.get(imp.model, steps["register"]["version"])
                steps["register"]["state"] = mv.state
                if mv.state == "ready":
                    imp.step = "rollout"
                elif mv.state == "failed":
                    raise InvalidRequest(f"conversion failed: {mv.error}")
        elif imp.step == "rollout":
            service = self.canary(imp.service_name, steps["register"]["version"])
            latest = service.rollouts[-1] if service.rollouts else None
            steps["rollout"] = {
                "number": latest.number if latest else None,
                "state": latest.state if latest else None,
            }
            imp.step, imp.state = "done", "succeeded"
        imp.steps = steps


class ImprovementEngine:
    """One thread: every ``TICK_S`` each running improvement takes a step."""

    def __init__(self, ctx: AppContext, improver: Callable[[Session], Improver]) -> None:
        self.ctx = ctx
        self.improver = improver
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="captures-improve", daemon=True)

    @classmethod
    def start(cls, ctx: AppContext, improver: Callable[[Session], Improver]) -> ImprovementEngine:
        engine = cls(ctx, improver)
        engine._thread.start()
        return engine

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("improvement tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def tick(self) -> None:
        me = self.ctx.settings.replicas.id
        with self.ctx.sessions() as session:
            if me is not None:
                claim_improvements(session, me, self.ctx.settings.replicas.lease_s)
            query = select(Improvement.id).where(Improvement.state == "running")
            if me is not None:
                query = query.where(Improvement.owner == me)
            ids = session.scalars(query).all()
        for imp_id in ids:
            with self.ctx.sessions() as session:
                imp = session.scalars(
                    select(Improvement)
                    .where(Improvement.id == imp_id, Improvement.state == "running")
                    .with_for_update(skip_locked=True)
                ).first()
                if imp is not None:
                    self.improver(session).tick(imp)


def claim_improvements(session: Session, me: str, lease_s: float) -> list[str]:
    """Claim every running improvement without a live owner; the ids won. Each claim is one
    conditional ``UPDATE`` naming the owner read, so two survivors cannot both win a row."""
    alive = live_replicas(session, lease_s) | {me}
    rows = session.execute(
        select(Improvement.id, Improvement.owner).where(
            Improvement.state == "running",
            or_(Improvement.owner.is_(None), Improvement.owner.not_in(alive)),
        )
    ).all()
    won = []
    for imp_id, owner in rows:
        condition = Improvement.owner.is_(None) if owner is None else Improvement.owner == owner
        result = session.execute(
            update(Improvement)
            .where(Improvement.id == imp_id, condition)
            .values(owner=me)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount == 1:
            won.append(imp_id)
            logger.info("improvement %s claimed (previous owner: %s)", imp_id, owner)
    return won
