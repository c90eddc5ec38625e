"""The rollout engine: one thread that moves every running edge rollout one step per tick.

Per stage: ``pending`` -> (record each device's active version and telemetry position, create
the stage's deployment) ``deploying`` -> (every device installed) ``baking`` -> (bake time over,
gates clean) ``passed``, and the next stage starts. A failed gate, at any point (a device's
local guard reverting during the bake fails the installs gate at once), marks the stage ``failed``,
rolls its devices back to the version each had before (a re-activation where the
device still holds it; a removal where it had none), records the gate and its figures, and stops
the rollout (``failed``). Stages before it keep the new version: they passed their own gates.

Everything the machine knows lives in the rollout's row (``plan``), written in the same
transaction as each step, and the engine keeps nothing in memory between ticks: a control plane
killed with SIGKILL resumes every rollout where its row says when it starts again. A step that
created a deployment and died before writing the row creates it again on resume; a second
deployment of the same version is harmless (the device re-activates what it holds).

Live selectors: on every tick an edge service whose targets are a label selector compares the
matching devices with the rollout's. A newcomer joins the last stage that has not started yet
(and gets the service's stable version now, if it has one); when every stage has started it
gets the version the rollout is at (the new one while running or succeeded, the stable one
after a failure). A device that stops matching leaves: it is dropped from pending stages and the
versions the service gave it are removed from it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import ControlPlaneError
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.services.models import Rollout, Service
from control_plane.services.rollouts import gates
from control_plane.services.schemas import HealthGates, RolloutStrategy

logger = logging.getLogger(__name__)

ACTIVE = ("running", "paused")


def active_version(reported: dict[str, Any] | None, model: str) -> tuple[str, str] | None:
    """(version, package digest) the device reports active for ``model``, if any."""
    for m in (reported or {}).get("models", []):
        if m.get("name") == model and m.get("active"):
            return str(m.get("version", "")), str(m.get("package_digest", ""))
    return None


def latest_rollout(session: Session, service_name: str) -> Rollout | None:
    return session.scalars(
        select(Rollout)
        .where(Rollout.service_name == service_name)
        .order_by(Rollout.number.desc())
        .limit(1)
    ).first()


def save(rollout: Rollout, plan: dict[str, Any]) -> None:
    rollout.plan = plan
    flag_modified(rollout, "plan")
    rollout.updated_at = utcnow()


def finish(service: Service, rollout: Rollout, state: str, reason: str, service_state: str) -> None:
    rollout.state, rollout.reason = state, reason
    rollout.finished_at = utcnow()
    service.state, service.reason = service_state, reason
    service.updated_at = utcnow()


def rollback(
    session: Session, ctx: AppContext, rollout: Rollout, stage: dict[str, Any], devices: list[str]
) -> list[str]:
    """Put each device back on the version it had before the stage; the deployment ids.

    Grouped by previous package, one deployment each, with the service's capture policy (the
    version a device goes back to keeps capturing what the service asks); devices that had none
    (or one the control plane does not have) get a removal of the rollout's version. Published
    together at the end.
    """
    deployments = DeploymentService(session, ctx)
    groups: dict[str, list[str]] = {}
    for device in devices:
        prev = stage["previous"].get(device)
        digest = prev["package_digest"] if prev else ""
        if prev and prev["version"] == rollout.version:
            continue  # it already ran this version before the rollout: nothing to undo
        groups.setdefault(digest, []).append(device)
    created, touched = [], []
    for digest, group in sorted(groups.items()):
        dep = None
        if digest:
            try:
                dep = deployments.create(
                    package_digest=digest,
                    package_name=None,
                    package_version=None,
                    device_ids=group,
                    publish=False,
                    capture=rollout.plan.get("capture"),
                )
            except ControlPlaneError as exc:
                # A previous version the control plane does not have (installed out of band):
                # removing the rollout's version hands activity back to what the device holds.
                logger.warning("rollout %s: %s; removing %s instead", rollout.id, exc, group)
        if dep is None:
            dep = deployments.create(
                package_digest=rollout.package_digest,
                package_name=None,
                package_version=None,
                device_ids=group,
                action="remove",
                publish=False,
            )
        created.append(dep.id)
        touched.extend(group)
    deployments.publish(touched)
    return created


class RolloutEngine:
    """The thread; ``tick`` is public so tests and tools can drive it step by step."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="rollout-engine", daemon=True)

    @classmethod
    def start(cls, ctx: AppContext) -> RolloutEngine:
        engine = cls(ctx)
        engine._thread.start()
        return engine

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("rollout engine tick failed")
            self._wake.wait(self.ctx.settings.services.rollout_tick_s)
            self._wake.clear()

    def tick(self) -> None:
        with self._lock, self.ctx.sessions() as session:
            names = session.scalars(select(Service.name).where(Service.type == "edge")).all()
            for name in names:
                service = session.get(Service, name)
                rollout = latest_rollout(session, name)
                if service is None or rollout is None:
                    continue
                try:
                    if service.spec.get("targets", {}).get("selector"):
                        self._sync_members(session, service, rollout)
                    if rollout.state == "running":
                        self._step(session, service, rollout)
                    session.commit()
                except Exception:
                    session.rollback()
                    logger.exception("rollout %s of %s failed a step", rollout.id, name)

    # --- stages ------------------------------------------------------------------------------

    def _step(self, session: Session, service: Service, rollout: Rollout) -> None:
        plan = copy.deepcopy(rollout.plan)
        stage = plan["stages"][rollout.stage]
        now = time.time()
        if stage["state"] == "pending":
            self._start_stage(session, rollout, plan, stage, now)
        elif stage["state"] == "deploying":
            verdict = gates.installs(session, self.ctx, stage)
            if verdict.state == "fail":
                self._fail(session, service, rollout, plan, stage, verdict)
                return
            if verdict.state == "pass":
                stage["gates"] = verdict.results
                stage["state"], stage["baking_since"] = "baking", now
        elif stage["state"] == "baking":
            # A device's local guard that reverts the version mid-bake reports the deployment
            # FAILED at step `guard`: the stage fails now, not when the bake is over.
            reverted = gates.installs(session, self.ctx, stage)
            if reverted.state == "fail":
                self._fail(session, service, rollout, plan, stage, reverted)
                return
            strategy = RolloutStrategy(**plan["strategy"])
            baked = now - float(stage["baking_since"]) >= strategy.bake_s
            verdict = gates.health(
                session,
                self.ctx,
                rollout.model,
                rollout.version,
                stage,
                HealthGates(**plan["gates"]),
                baked,
            )
            stage["gates"] = [r for r in stage["gates"] if r["gate"] == "installs"]
            stage["gates"] += verdict.results
            if verdict.state == "fail":
                self._fail(session, service, rollout, plan, stage, verdict)
                return
            if verdict.state == "pass":
                stage["state"] = "passed"
                self._advance(service, rollout, plan)
        save(rollout, plan)

    def _start_stage(
        self,
        session: Session,
        rollout: Rollout,
        plan: dict[str, Any],
        stage: dict[str, Any],
        now: float,
    ) -> None:
        devices = DeviceService(session, self.ctx)
        present = [d for d in stage["devices"] if devices.find(d) is not None]
        stage["devices"] = present
        if not present:
            stage["state"] = "skipped"
            service = session.get(Service, rollout.service_name)
            assert service is not None
            self._advance(service, rollout, plan)
            save(rollout, plan)
            return
        for d in present:
            device = devices.get(d)
            prev = active_version(device.reported, plan["package_name"])
            stage["previous"][d] = {"version": prev[0], "package_digest": prev[1]} if prev else None
            stage["seq0"][d] = device.telemetry_seq
        dep = DeploymentService(session, self.ctx).create(
            package_digest=rollout.package_digest,
            package_name=None,
            package_version=None,
            device_ids=present,
            guard=plan.get("guard"),
            warmup=plan.get("warmup"),
            capture=plan.get("capture"),
        )
        stage["deployment_id"], stage["state"], stage["started_at"] = dep.id, "deploying", now
        logger.info(
            "rollout %s: stage %s started on %d device(s)", rollout.id, stage["name"], len(present)
        )
        save(rollout, plan)

    def _advance(self, service: Service, rollout: Rollout, plan: dict[str, Any]) -> None:
        if rollout.stage + 1 < len(plan["stages"]):
            rollout.stage += 1
            return
        spec = dict(service.spec)
        spec["stable"] = {
            "version": rollout.version,
            "package_digest": rollout.package_digest,
        }
        service.spec = spec
        finish(service, rollout, "succeeded", "", "running")
        logger.info("rollout %s of %s succeeded", rollout.id, service.name)

    def _fail(
        self,
        session: Session,
        service: Service,
        rollout: Rollout,
        plan: dict[str, Any],
        stage: dict[str, Any],
        verdict: gates.Verdict,
    ) -> None:
        stage["gates"] = _dedupe(stage["gates"] + verdict.results)
        reason = f"{stage['name']}: {verdict.reason}"
        stage["state"] = "failed"
        save(rollout, plan)
        stage["rollback_deployments"] = rollback(
            session, self.ctx, rollout, stage, stage["devices"]
        )
        stage["state"] = "rolled_back"
        finish(service, rollout, "failed", reason, "failed")
        save(rollout, plan)
        logger.warning("rollout %s of %s stopped: %s", rollout.id, service.name, reason)

    # --- live selector -----------------------------------------------------------------------

    def _sync_members(self, session: Session, service: Service, rollout: Rollout) -> None:
        selector = service.spec["targets"]["selector"]
        matching = {d.id for d in DeviceService(session, self.ctx).list(selector)}
        plan = copy.deepcopy(rollout.plan)
        known = {d for s in plan["stages"] for d in s["devices"]} | set(plan["joined"])
        joined, left = sorted(matching - known), sorted(known - matching)
        left = [d for d in left if d not in plan["left"]]
        if not joined and not left:
            return
        deployments = DeploymentService(session, self.ctx)
        stable = service.spec.get("stable")
        for device in joined:
            pending = [s for s in plan["stages"] if s["state"] == "pending"]
            if rollout.state in ACTIVE and pending:
                pending[-1]["devices"].append(device)
                give = stable
            elif rollout.state in ("running", "paused", "succeeded"):
                give = {"version": rollout.version, "package_digest": rollout.package_digest}
            else:
                give = stable
            plan["joined"][device] = give["version"] if give else ""
            if give:
                deployments.create(
                    package_digest=give["package_digest"],
                    package_name=None,
                    package_version=None,
                    device_id=device,
                    guard=plan.get("guard"),
                    capture=plan.get("capture"),
                )
            logger.info("rollout %s: %s joined (given %s)", rollout.id, device, give)
        for device in left:
            for s in plan["stages"]:
                if s["state"] == "pending" and device in s["devices"]:
                    s["devices"].remove(device)
            plan["left"].append(device)
            if DeviceService(session, self.ctx).find(device) is None:
                continue
            for digest in {rollout.package_digest, *([stable["package_digest"]] if stable else [])}:
                deployments.create(
                    package_digest=digest,
                    package_name=None,
                    package_version=None,
                    device_id=device,
                    action="remove",
                )
            logger.info("rollout %s: %s left; its versions are removed", rollout.id, device)
        save(rollout, plan)


def _dedupe(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in results:
        seen[r["gate"]] = r
    return list(seen.values())
