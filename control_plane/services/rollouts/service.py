"""What the routes ask of edge rollouts: start one, pause, resume, abort, roll back, history.

Starting a rollout only records it (stages planned from the targets of the moment); the engine
(``engine.py``) does the rest on its next tick. Every operation is a state change of the row, so
it holds across a restart of the control plane.
"""

from __future__ import annotations

import copy
import logging
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.registry.packages.service import PackageService
from control_plane.registry.service import ModelService
from control_plane.services.models import Rollout, Service
from control_plane.services.rollouts import engine, plan
from control_plane.services.schemas import (
    EdgeTargets,
    HealthGates,
    RolloutPublic,
    RolloutStrategy,
    StagePublic,
)

logger = logging.getLogger(__name__)


def capture_policy(capture: dict[str, Any] | None) -> dict[str, Any] | None:
    """The device's part of an edge service's ``capture`` block (all but ``dataset``)."""
    if not capture:
        return None
    return {k: v for k, v in capture.items() if k != "dataset"}


class RolloutService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    def package_of(self, model: str, version: str) -> tuple[str, str]:
        """(digest, package name) of a model version: the registry's, else an uploaded package
        of that name and version (signed outside the registry)."""
        packages = PackageService(self.session, self.ctx)
        try:
            mv = ModelService(self.session, self.ctx).get(model, version)
        except NotFound:
            package = packages.find(model, version)
            return package.digest, package.name
        if mv.state != "ready" or not mv.package_digest:
            raise InvalidRequest(f"model {model} version {version} is {mv.state}, not ready")
        return mv.package_digest, packages.get(mv.package_digest).name

    def edge_services(self) -> list[Service]:
        """Every edge service, by name."""
        return list(
            self.session.scalars(
                select(Service).where(Service.type == "edge").order_by(Service.name)
            ).all()
        )

    def targets(self, targets: EdgeTargets) -> list[str]:
        devices = DeviceService(self.session, self.ctx)
        if targets.device_ids is not None:
            return [devices.get(d).id for d in targets.device_ids]
        assert targets.selector is not None
        return [d.id for d in devices.list(targets.selector)]

    def start(self, service: Service) -> Rollout:
        """Plan and record a rollout of the service's model version (superseding a running one)."""
        spec = service.spec
        model = spec["models"][0]
        digest, package_name = self.package_of(model["model"], model["version"])
        current = engine.latest_rollout(self.session, service.name)
        if current is not None and current.state in engine.ACTIVE:
            current.state, current.reason = "superseded", "a newer rollout started"
        devices = self.targets(EdgeTargets(**spec["targets"]))
        strategy = RolloutStrategy(**spec.get("strategy") or {})
        rollout = Rollout(
            id=f"ro-{secrets.token_hex(6)}",
            service_name=service.name,
            number=(current.number + 1) if current is not None else 1,
            model=model["model"],
            version=model["version"],
            package_digest=digest,
            state="running",
            stage=0,
            plan={
                "package_name": package_name,
                "strategy": strategy.model_dump(),
                "gates": HealthGates(**spec.get("gates") or {}).model_dump(),
                "guard": spec.get("guard"),
                "warmup": spec.get("warmup"),
                # The capture policy each device gets with the version (without the dataset).
                "capture": capture_policy(spec.get("capture")),
                "stages": plan.stages(devices, strategy) if devices else [],
                "joined": {},
                "left": [],
            },
        )
        if not rollout.plan["stages"]:
            rollout.plan["stages"] = [plan.new_stage("canary", [])]
        self.session.add(rollout)
        service.state, service.reason = "deploying", f"rollout {rollout.number}"
        logger.info(
            "edge service %s: rollout %d of %s %s to %d device(s)",
            service.name,
            rollout.number,
            rollout.model,
            rollout.version,
            len(devices),
        )
        return rollout

    def change_capture(self, service: Service, capture: dict[str, Any] | None) -> list[str]:
        """A new ``capture`` block for an edge service: kept in its spec, given to the rest of a
        running rollout, and sent at once to its devices with the versions they already run (no
        new rollout, no download); the devices given it."""
        service.spec = {**service.spec, "capture": capture}
        policy = capture_policy(capture)
        current = engine.latest_rollout(self.session, service.name)
        if current is not None:
            p = copy.deepcopy(current.plan)
            p["capture"] = policy
            engine.save(current, p)
        model = service.spec["models"][0]
        package_name = current.plan["package_name"] if current is not None else model["model"]
        devices = self.targets(EdgeTargets(**service.spec["targets"]))
        return DeploymentService(self.session, self.ctx).set_capture(devices, package_name, policy)

    def history(self, service_name: str) -> list[Rollout]:
        return list(
            self.session.scalars(
                select(Rollout)
                .where(Rollout.service_name == service_name)
                .order_by(Rollout.number.desc())
            ).all()
        )

    def latest(self, service: Service) -> Rollout:
        rollout = engine.latest_rollout(self.session, service.name)
        if rollout is None:
            raise NotFound(f"service {service.name} has no rollout")
        return rollout

    # --- operator actions --------------------------------------------------------------------

    def pause(self, service: Service) -> Rollout:
        rollout = self.latest(service)
        if rollout.state != "running":
            raise Conflict(f"rollout {rollout.number} is {rollout.state}, not running")
        rollout.state = "paused"
        service.state, service.reason = "paused", f"rollout {rollout.number} paused"
        return rollout

    def resume(self, service: Service) -> Rollout:
        rollout = self.latest(service)
        if rollout.state != "paused":
            raise Conflict(f"rollout {rollout.number} is {rollout.state}, not paused")
        rollout.state = "running"
        service.state, service.reason = "deploying", f"rollout {rollout.number}"
        return rollout

    def abort(self, service: Service) -> Rollout:
        """Stop where it is: devices keep what they run now."""
        rollout = self.latest(service)
        if rollout.state not in engine.ACTIVE:
            raise Conflict(f"rollout {rollout.number} is {rollout.state}; nothing to abort")
        engine.finish(service, rollout, "aborted", "aborted by an operator", "stopped")
        return rollout

    def rollback(self, service: Service) -> Rollout:
        """Every device the rollout reached goes back to the version it had before it."""
        rollout = self.latest(service)
        if rollout.state == "rolled_back":
            raise Conflict(f"rollout {rollout.number} is already rolled back")
        doc = copy.deepcopy(rollout.plan)
        for stage in doc["stages"]:
            if stage["state"] in ("deploying", "baking", "passed", "failed"):
                stage["rollback_deployments"] += engine.rollback(
                    self.session, self.ctx, rollout, stage, stage["devices"]
                )
                stage["state"] = "rolled_back"
        engine.save(rollout, doc)
        engine.finish(service, rollout, "rolled_back", "rolled back by an operator", "rolled_back")
        return rollout

    # --- views -------------------------------------------------------------------------------

    def public(self, rollout: Rollout) -> RolloutPublic:
        deployments = DeploymentService(self.session, self.ctx)
        stages = []
        for s in rollout.plan["stages"]:
            states: dict[str, str] = {}
            if s["deployment_id"]:
                dep = deployments.get(s["deployment_id"])
                states = {t.device_id: t.state for t in dep.targets}
            stages.append(
                StagePublic(
                    name=s["name"],
                    devices=s["devices"],
                    state=s["state"],
                    deployment_id=s["deployment_id"],
                    previous={d: (p or {}).get("version") for d, p in s["previous"].items()},
                    gates=s["gates"],
                    device_states=states,
                    rollback_deployments=s["rollback_deployments"],
                )
            )
        public = RolloutPublic.model_validate(rollout)
        public.stages = stages
        public.joined = dict(rollout.plan.get("joined", {}))
        public.left = list(rollout.plan.get("left", []))
        return public
