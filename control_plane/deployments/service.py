"""Deployments: desired state per device, supersession, and what each device's desired state is.

A deployment puts one package on one device, on a list of devices, or on every device matching a
label selector (resolved when the deployment is created). Its action is ``install`` (hold the
package; activate it unless ``standby``) or ``remove`` (uninstall that version). For each
targeted device it supersedes earlier deployments:

* an active install supersedes every earlier one of the same model name except removals of
  other versions, so a device activates exactly the newest active deployment of a model (and a
  rollback to a version it still holds is a re-activation, no download);
* a standby install or a removal supersedes only earlier ones of the same model version, so a
  candidate or a removal sits beside the model's active deployment.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import InvalidRequest, NotFound
from control_plane.deployments.models import Deployment, DeploymentTarget
from control_plane.devices.service import DeviceService
from control_plane.registry.packages.service import PackageService

logger = logging.getLogger(__name__)

# Deployment outcomes a device reports, mapped to a target's state.
OUTCOME_STATES = {
    "IN_PROGRESS": "in_progress",
    "INSTALLED": "installed",
    "FAILED": "failed",
    "REMOVED": "removed",
}
# A late IN_PROGRESS report never moves a target out of these.
FINAL_STATES = ("installed", "failed", "removed")
ACTIONS = ("install", "remove")


@dataclass(frozen=True)
class DeploymentResultReport:
    deployment_id: str
    outcome: str  # IN_PROGRESS | INSTALLED | FAILED
    reason: str = ""
    step: str = ""
    chunks_done: int = 0
    chunks_total: int = 0


@dataclass(frozen=True)
class DesiredModelView:
    deployment_id: str
    name: str
    version: str
    package_digest: str
    package_size: int
    chunk_size: int
    chunk_sha256: list[bytes]
    standby: bool = False
    weight: float = 0.0
    guard: dict[str, Any] | None = None
    warmup: dict[str, Any] | None = None
    cdc_index_sha256: bytes = b""  # empty: the package has no chunk index (no delta)
    capture: dict[str, Any] | None = None


@dataclass(frozen=True)
class RemovalView:
    deployment_id: str
    name: str
    version: str


@dataclass(frozen=True)
class DeviceModelView:
    name: str
    version: str
    package_digest: str
    active: bool
    deployment_id: str | None
    out_of_band: bool


@dataclass(frozen=True)
class DesiredStateView:
    device_id: str
    generation: int
    deployment_id: str
    models: list[DesiredModelView]
    removals: list[RemovalView] = field(default_factory=list)


def package_grants(session: Session, device_id: str | None = None) -> dict[str, set[str]]:
    """Device id -> the digests of the packages in its current desired state (install entries of
    targets not superseded): what ``is_desired`` lets it pull, for every device (or the one
    named) in one query.

    The fleet grants each device read access to these packages' shared topics (the broker ACL,
    and EMQX's authorization hook).
    """
    out: dict[str, set[str]] = {}
    query = (
        select(DeploymentTarget.device_id, Deployment.package_digest)
        .join(Deployment, DeploymentTarget.deployment_id == Deployment.id)
        .where(DeploymentTarget.state != "superseded", Deployment.action == "install")
        .distinct()
    )
    if device_id is not None:
        query = query.where(DeploymentTarget.device_id == device_id)
    rows = session.execute(query).all()
    for device_id, digest in rows:
        out.setdefault(device_id, set()).add(digest)
    return out


#: Devices per ``IN (...)`` list: well below SQLite's bound variables limit (32,766 since 3.32,
#: 999 before) and PostgreSQL's 65,535.
_IN_BATCH = 500


def _batches(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _IN_BATCH] for i in range(0, len(ids), _IN_BATCH)]


def _entry(dep: Deployment) -> DesiredModelView | RemovalView:
    """What one deployment puts in the desired state of each of its devices."""
    pkg = dep.package
    if dep.action == "remove":
        return RemovalView(dep.id, pkg.name, pkg.version)
    return DesiredModelView(
        deployment_id=dep.id,
        name=pkg.name,
        version=pkg.version,
        package_digest=pkg.digest,
        package_size=pkg.size,
        chunk_size=pkg.chunk_size,
        chunk_sha256=[pkg.chunk_sha256(i) for i in range(pkg.chunk_count)],
        standby=dep.standby,
        weight=dep.weight,
        guard=dep.guard,
        warmup=dep.warmup,
        cdc_index_sha256=pkg.cdc_index_sha256 or b"",
        capture=dep.capture,
    )


class DeploymentService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    def create(
        self,
        *,
        package_digest: str | None,
        package_name: str | None,
        package_version: str | None,
        device_id: str | None = None,
        selector: dict[str, str] | None = None,
        device_ids: list[str] | None = None,
        action: str = "install",
        standby: bool = False,
        weight: float = 0.0,
        guard: dict[str, Any] | None = None,
        warmup: dict[str, Any] | None = None,
        publish: bool = True,
        capture: dict[str, Any] | None = None,
    ) -> Deployment:
        """Record the deployment, bump each target's generation, publish their desired states.

        ``publish=False`` leaves publishing to the caller (``publish``), for one that creates
        several deployments in one go.
        """
        packages = PackageService(self.session, self.ctx)
        if package_digest:
            package = packages.get(package_digest)
        elif package_name and package_version:
            package = packages.find(package_name, package_version)
        else:
            raise InvalidRequest("name the package by digest, or by name and version")
        if action not in ACTIONS:
            raise InvalidRequest(f"action must be one of {', '.join(ACTIONS)}")
        if action != "remove":  # removing a version never needs its key
            packages.check_deployable(package)
        if action == "remove" and (standby or weight or guard or warmup):
            raise InvalidRequest("standby, weight, guard and warmup are for action install")
        if standby and (guard or warmup):
            raise InvalidRequest("guard and warmup are for a version that is activated")
        if weight and not standby:
            raise InvalidRequest("weight is for a standby version (the active one takes the rest)")
        if not 0 <= weight <= 100:
            raise InvalidRequest("weight is a percentage, 0 to 100")
        if sum(x is not None for x in (device_id, selector, device_ids)) != 1:
            raise InvalidRequest("target exactly one of: a device id, a label selector")
        devices_service = DeviceService(self.session, self.ctx)
        if device_id is not None:
            devices = [devices_service.get(device_id)]
            target: dict[str, Any] = {"device_id": device_id}
        elif device_ids is not None:
            devices = [devices_service.get(d) for d in device_ids]
            target = {"device_ids": list(device_ids)}
            if not devices:
                raise InvalidRequest("no device to deploy to")
        else:
            assert selector is not None
            devices = devices_service.list(selector)
            target = {"selector": dict(selector)}
            if not devices:
                raise InvalidRequest(f"label selector {selector} matches no device")

        deployment = Deployment(
            id=f"dep-{secrets.token_hex(6)}",
            package_digest=package.digest,
            target=target,
            action=action,
            standby=standby,
            weight=weight,
            guard=guard,
            warmup=warmup,
            capture=capture if action == "install" else None,
        )
        model_name = package.name
        self._supersede([d.id for d in devices], model_name, package.version, action, standby)
        self.session.add(deployment)
        for device in devices:
            deployment.targets.append(
                DeploymentTarget(
                    device_id=device.id,
                    model_name=model_name,
                    chunks_total=package.chunk_count if action == "install" else 0,
                )
            )
            devices_service.bump_desired_generation(device)
        self.session.commit()
        logger.info(
            "deployment %s: %s %s %s to %d device(s)",
            deployment.id,
            action,
            package.name,
            package.version,
            len(devices),
        )
        if publish:
            self.ctx.publisher.publish_desired([d.id for d in devices])
        return deployment

    def set_capture(
        self, device_ids: list[str], model_name: str, capture: dict[str, Any] | None
    ) -> list[str]:
        """Give the live install deployments of ``model_name`` on these devices a new capture
        policy; the devices whose desired state changed (generation bumped, not published).

        Only deployments whose live targets all lie among ``device_ids`` change: one that also
        serves other devices is not this caller's to edit.
        """
        wanted = set(device_ids)
        touched: set[str] = set()
        deps: dict[str, Deployment] = {}
        for ids in _batches(sorted(wanted)):
            for t in self.session.scalars(
                select(DeploymentTarget).where(
                    DeploymentTarget.device_id.in_(ids),
                    DeploymentTarget.model_name == model_name,
                    DeploymentTarget.state != "superseded",
                )
            ):
                deps[t.deployment_id] = t.deployment
        for dep in deps.values():
            live = {t.device_id for t in dep.targets if t.state != "superseded"}
            if dep.action != "install" or not live <= wanted or dep.capture == capture:
                continue
            dep.capture = capture
            touched |= live
        devices = DeviceService(self.session, self.ctx)
        for device_id in sorted(touched):
            device = devices.find(device_id)
            if device is not None:
                devices.bump_desired_generation(device)
        return sorted(touched)

    def publish(self, device_ids: list[str]) -> None:
        """Publish the devices' desired states (after ``create(..., publish=False)``)."""
        if device_ids:
            self.ctx.publisher.publish_desired(sorted(set(device_ids)))

    def _supersede(
        self, device_ids: list[str], model_name: str, version: str, action: str, standby: bool
    ) -> None:
        """Mark the devices' earlier targets of this model that the new deployment replaces.

        One query per ``_IN_BATCH`` devices rather than one per device: a deployment to a fleet
        must not cost a round trip per device.
        """
        whole_model = action == "install" and not standby
        for ids in _batches(device_ids):
            older = self.session.scalars(
                select(DeploymentTarget).where(
                    DeploymentTarget.device_id.in_(ids),
                    DeploymentTarget.model_name == model_name,
                    DeploymentTarget.state != "superseded",
                )
            ).all()
            # What decides, per earlier deployment (a handful, however many targets they have).
            kinds = {
                dep.id: (dep.action, dep.package.version)
                for dep in self.session.scalars(
                    select(Deployment)
                    .where(Deployment.id.in_({t.deployment_id for t in older}))
                    .options(lazyload(Deployment.targets))
                )
            }
            for t in older:
                dep_action, dep_version = kinds[t.deployment_id]
                if dep_version == version or (whole_model and dep_action != "remove"):
                    t.state = "superseded"
                    t.updated_at = utcnow()

    def list(self) -> list[Deployment]:
        return list(
            self.session.scalars(select(Deployment).order_by(Deployment.created_at.desc())).all()
        )

    def get(self, deployment_id: str) -> Deployment:
        deployment = self.session.get(Deployment, deployment_id)
        if deployment is None:
            raise NotFound(f"deployment {deployment_id} not found")
        return deployment

    def desired_state(self, device_id: str) -> DesiredStateView | None:
        """The device's current desired state, or None when the device no longer exists."""
        return self.desired_states([device_id]).get(device_id)

    def desired_states(self, device_ids: list[str]) -> dict[str, DesiredStateView]:
        """The current desired state of each device that exists, by device id.

        Three queries per ``_IN_BATCH`` devices whatever the fleet's size: the devices'
        generations, their current (device, deployment) pairs, and those deployments (a
        handful) with their packages, each loaded and turned into entries once, not once per
        device: a deployment to a thousand devices is one row here, not a thousand.
        """
        out: dict[str, DesiredStateView] = {}
        devices = DeviceService(self.session, self.ctx)
        entries: dict[str, tuple[Deployment, DesiredModelView | RemovalView]] = {}
        for ids in _batches(device_ids):
            generations = devices.generations(ids)
            pairs = self.session.execute(
                select(DeploymentTarget.device_id, DeploymentTarget.deployment_id).where(
                    DeploymentTarget.device_id.in_(ids), DeploymentTarget.state != "superseded"
                )
            ).all()
            missing = {dep_id for _, dep_id in pairs} - set(entries)
            if missing:
                for dep in self.session.scalars(
                    select(Deployment)
                    .where(Deployment.id.in_(missing))
                    .options(lazyload(Deployment.targets))
                ):
                    entries[dep.id] = (dep, _entry(dep))
            per_device: dict[str, list[tuple[Deployment, DesiredModelView | RemovalView]]] = {
                d: [] for d in generations
            }
            for device_id, dep_id in pairs:
                if device_id in per_device:
                    per_device[device_id].append(entries[dep_id])
            for device_id, deps in per_device.items():
                deps.sort(key=lambda e: (e[0].created_at, e[0].id))
                out[device_id] = DesiredStateView(
                    device_id=device_id,
                    generation=generations[device_id],
                    deployment_id=deps[-1][0].id if deps else "",
                    models=[e for _, e in deps if isinstance(e, DesiredModelView)],
                    removals=[e for _, e in deps if isinstance(e, RemovalView)],
                )
        return out

    def device_ids_with_desired_state(self) -> list[str]:
        return list(
            self.session.scalars(
                select(DeploymentTarget.device_id)
                .where(DeploymentTarget.state != "superseded")
                .distinct()
            ).all()
        )

    def device_targets(self, device_id: str) -> list[DeploymentTarget]:
        """The device's current (not superseded) targets, each with its deployment and package."""
        return list(
            self.session.scalars(
                select(DeploymentTarget).where(
                    DeploymentTarget.device_id == device_id, DeploymentTarget.state != "superseded"
                )
            ).all()
        )

    def device_models(self, device_id: str) -> list[DeviceModelView]:
        """What the device reports it holds, each with the deployment that put it there.

        A version no install deployment to this device ever named (an offline bundle, a
        package installed over the agent's own API) is ``out_of_band``: shown, and left alone
        until a deployment or an edge service says otherwise.
        """
        device = DeviceService(self.session, self.ctx).get(device_id)
        deployed: dict[str, str] = {}
        for dep_id, digest in self.session.execute(
            select(Deployment.id, Deployment.package_digest)
            .join(DeploymentTarget, DeploymentTarget.deployment_id == Deployment.id)
            .where(DeploymentTarget.device_id == device_id, Deployment.action == "install")
            .order_by(Deployment.created_at)
        ).all():
            deployed[digest] = dep_id
        out = []
        for m in (device.reported or {}).get("models", []):
            digest = str(m.get("package_digest", ""))
            out.append(
                DeviceModelView(
                    name=str(m.get("name", "")),
                    version=str(m.get("version", "")),
                    package_digest=digest,
                    active=bool(m.get("active", False)),
                    deployment_id=deployed.get(digest),
                    out_of_band=digest not in deployed,
                )
            )
        return out

    def is_desired(self, device_id: str, package_digest: str) -> bool:
        """Whether the package is in the device's current desired state.

        A device may only pull packages deployed to it, so broker credentials alone do not open
        the whole package registry.
        """
        found = self.session.scalars(
            select(DeploymentTarget.device_id)
            .join(Deployment)
            .where(
                DeploymentTarget.device_id == device_id,
                DeploymentTarget.state != "superseded",
                Deployment.package_digest == package_digest,
                Deployment.action == "install",
            )
        ).first()
        return found is not None

    def load_targets(self, device_ids: list[str]) -> list[DeploymentTarget]:
        """Read these devices' current targets into the session in one query, so that the
        ``record_result`` calls that follow need no round trip each. Keep the returned list
        while they run: the session's identity map holds objects weakly."""
        out: list[DeploymentTarget] = []
        for ids in _batches(device_ids):
            out += self.session.scalars(
                select(DeploymentTarget)
                .where(DeploymentTarget.device_id.in_(ids), DeploymentTarget.state != "superseded")
                .options(lazyload(DeploymentTarget.deployment))
            ).all()
        return out

    def record_result(
        self, device_id: str, result: DeploymentResultReport, commit: bool = True
    ) -> None:
        """Fold a device's reported deployment result into that deployment's progress.

        Idempotent: the same report twice leaves the same state. A result for a deployment that
        was superseded for this device does not resurrect it, and a late IN_PROGRESS does not undo
        a final INSTALLED or FAILED. ``commit=False``: the caller commits.
        """
        if result.outcome not in OUTCOME_STATES:
            return
        target = self.session.get(DeploymentTarget, (result.deployment_id, device_id))
        if target is None:
            logger.info("device %s reports unknown deployment %s", device_id, result.deployment_id)
        elif target.state == "superseded" or (
            target.state in FINAL_STATES and result.outcome == "IN_PROGRESS"
        ):
            logger.debug("stale result for %s on %s ignored", target.deployment_id, device_id)
        else:
            target.state = OUTCOME_STATES[result.outcome]
            target.reason = result.reason
            target.step = result.step
            target.chunks_done = result.chunks_done
            target.chunks_total = result.chunks_total
            target.updated_at = utcnow()
        if commit:
            self.session.commit()
