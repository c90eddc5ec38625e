"""Device registry: registration with broker credentials, liveness and reported state."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.deployments.models import DeploymentTarget
from control_plane.devices.credentials import hash_password, new_password
from control_plane.devices.models import Device
from protos import fleet_topics

logger = logging.getLogger(__name__)

STATUSES = ("online", "offline", "unknown")
# Deployment outcomes a device reports, mapped to a target's state.
OUTCOME_STATES = {"IN_PROGRESS": "in_progress", "INSTALLED": "installed", "FAILED": "failed"}
# A late IN_PROGRESS report never moves a target out of these.
FINAL_STATES = ("installed", "failed")


@dataclass(frozen=True)
class Registration:
    device: Device
    password: str


@dataclass(frozen=True)
class DeploymentResultReport:
    deployment_id: str
    outcome: str  # IN_PROGRESS | INSTALLED | FAILED
    reason: str = ""
    step: str = ""
    chunks_done: int = 0
    chunks_total: int = 0


@dataclass(frozen=True)
class ReportedStateReport:
    """A device's ReportedState, already decoded by the fleet channel."""

    device_id: str
    document: dict[str, Any]
    last_result: DeploymentResultReport | None


def matches(labels: dict[str, Any], selector: dict[str, str]) -> bool:
    """A label selector matches when every key is present with the same value."""
    return all(str(labels.get(k)) == v for k, v in selector.items())


class DeviceService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    def register(
        self, name: str, labels: dict[str, str], device_id: str | None = None
    ) -> Registration:
        device_id = device_id or f"dev-{secrets.token_hex(6)}"
        if not fleet_topics.valid_device_id(device_id):
            raise InvalidRequest(
                f"device id {device_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if device_id == self.ctx.settings.mqtt.username:
            raise InvalidRequest(f"{device_id!r} is the control plane's own broker identity")
        if self.session.get(Device, device_id) is not None:
            raise Conflict(f"device {device_id} already exists")
        password = new_password()
        device = Device(
            id=device_id,
            name=name or device_id,
            labels=labels,
            password_hash=hash_password(password),
        )
        self.session.add(device)
        self.session.commit()
        logger.info("registered device %s", device_id)
        self.ctx.registry_changed()
        return Registration(device, password)

    def list(self, selector: dict[str, str] | None = None) -> list[Device]:
        devices = self.session.scalars(select(Device).order_by(Device.created_at)).all()
        return [d for d in devices if not selector or matches(d.labels, selector)]

    def get(self, device_id: str) -> Device:
        device = self.session.get(Device, device_id)
        if device is None:
            raise NotFound(f"device {device_id} not found")
        return device

    def delete(self, device_id: str) -> None:
        """Delete the device and revoke its credentials (the broker rereads its password file)."""
        device = self.get(device_id)
        self.session.delete(device)
        self.session.commit()
        logger.info("deleted device %s", device_id)
        self.ctx.registry_changed()
        self.ctx.publisher.forget_device(device_id)

    # --- updates from the fleet channel -----------------------------------------------------

    def record_status(self, device_id: str, status: str) -> None:
        device = self.session.get(Device, device_id)
        if device is None:
            logger.warning("status from unknown device %s ignored", device_id)
            return
        device.status = status if status in STATUSES else "unknown"
        device.status_at = utcnow()
        self.session.commit()

    def record_reported(self, report: ReportedStateReport) -> None:
        """Store the device's reported state and fold its last deployment result into progress.

        Idempotent: the same report twice leaves the same state. A result for a deployment that
        was superseded for this device does not resurrect it, and a late IN_PROGRESS does not undo
        a final INSTALLED or FAILED.
        """
        device = self.session.get(Device, report.device_id)
        if device is None:
            logger.warning("reported state from unknown device %s ignored", report.device_id)
            return
        device.reported = report.document
        device.reported_at = utcnow()
        result = report.last_result
        if result is not None and result.outcome in OUTCOME_STATES:
            target = self.session.get(DeploymentTarget, (result.deployment_id, device.id))
            if target is None:
                logger.info(
                    "device %s reports unknown deployment %s", device.id, result.deployment_id
                )
            elif target.state == "superseded" or (
                target.state in FINAL_STATES and result.outcome == "IN_PROGRESS"
            ):
                logger.debug("stale result for %s on %s ignored", target.deployment_id, device.id)
            else:
                target.state = OUTCOME_STATES[result.outcome]
                target.reason = result.reason
                target.step = result.step
                target.chunks_done = result.chunks_done
                target.chunks_total = result.chunks_total
                target.updated_at = dt.datetime.now(dt.UTC)
        self.session.commit()
