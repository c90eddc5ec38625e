"""Device registry: registration with broker credentials, liveness and reported state."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.credentials import hash_password, new_password
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.devices.models import Device
from control_plane.devices.schemas import DeviceBundle, MqttBundle
from protos import fleet_topics

logger = logging.getLogger(__name__)

STATUSES = ("online", "offline", "unknown")


@dataclass(frozen=True)
class Registration:
    device: Device
    password: str


@dataclass(frozen=True)
class ReportedStateReport:
    """A device's ReportedState, already decoded by the fleet channel."""

    device_id: str
    document: dict[str, Any]


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
        self.ctx.publisher.devices_changed()
        return Registration(device, password)

    def reset_password(self, device_id: str) -> Registration:
        """Give the device a new broker password, shown once, as at registration.

        The old one stops working when the broker rereads its files. A control-plane replica
        taking over an online service's agents uses it: the password its owner wrote into their
        configs exists nowhere else.
        """
        device = self.get(device_id)
        password = new_password()
        device.password_hash = hash_password(password)
        self.session.commit()
        self.ctx.publisher.devices_changed()
        return Registration(device, password)

    def list(self, selector: dict[str, str] | None = None) -> list[Device]:
        devices = self.session.scalars(select(Device).order_by(Device.created_at)).all()
        return [d for d in devices if not selector or matches(d.labels, selector)]

    def get(self, device_id: str) -> Device:
        device = self.session.get(Device, device_id)
        if device is None:
            raise NotFound(f"device {device_id} not found")
        return device

    def update(
        self, device_id: str, name: str | None = None, labels: dict[str, str] | None = None
    ) -> Device:
        """Rename or relabel. Existing deployments keep their targets: a label selector is
        resolved when a deployment is created."""
        device = self.get(device_id)
        if name is not None:
            device.name = name
        if labels is not None:
            device.labels = dict(labels)
        self.session.commit()
        return device

    def delete(self, device_id: str) -> None:
        """Delete the device and revoke its credentials (the broker rereads its password file)."""
        device = self.get(device_id)
        self.session.delete(device)
        self.session.commit()
        logger.info("deleted device %s", device_id)
        self.ctx.publisher.devices_changed()
        self.ctx.publisher.forget_device(device_id)

    # --- updates from the fleet channel -----------------------------------------------------

    def record_status(self, device_id: str, status: str, commit: bool = True) -> None:
        """``commit=False``: the caller commits (the fleet channel stores many in one go)."""
        device = self.session.get(Device, device_id)
        if device is None:
            logger.warning("status from unknown device %s ignored", device_id)
            return
        device.status = status if status in STATUSES else "unknown"
        device.status_at = utcnow()
        if commit:
            self.session.commit()

    def record_reported(self, report: ReportedStateReport, commit: bool = True) -> None:
        """Store the device's reported state (its deployment result is the deployments' to fold).

        ``commit=False``: the caller commits."""
        device = self.session.get(Device, report.device_id)
        if device is None:
            logger.warning("reported state from unknown device %s ignored", report.device_id)
            return
        device.reported = report.document
        device.reported_at = utcnow()
        if commit:
            self.session.commit()

    def bundle(self, registration: Registration) -> DeviceBundle:
        """Everything an agent needs to join the fleet as this device (shown once: the password)."""
        settings = self.ctx.settings
        device = registration.device
        return DeviceBundle(
            device_id=device.id,
            mqtt=MqttBundle(
                url=settings.mqtt.device_broker_url or self.ctx.broker_url,
                client_id=device.id,
                username=device.id,
                password=registration.password,
                topic_prefix=fleet_topics.device_prefix(device.id, settings.mqtt.topic_root),
            ),
            trusted_keys_pem=self.ctx.trusted_key_pems(),
        )

    def counters(self, device_id: str) -> dict[str, int]:
        """What the fleet channel refused from the device since the control plane started."""
        return self.ctx.publisher.counters(device_id)

    def find(self, device_id: str) -> Device | None:
        """The device, or None when it does not exist (or no longer does)."""
        return self.session.get(Device, device_id)

    def load(self, device_ids: list[str]) -> list[Device]:
        """Read these devices into the session in one query, so that the per-device lookups
        that follow (``record_status``, ``record_reported``) need no round trip each. Keep the
        returned list while they run: the session's identity map holds objects weakly."""
        return list(self.session.scalars(select(Device).where(Device.id.in_(device_ids))).all())

    def generations(self, device_ids: list[str]) -> dict[str, int]:
        """The desired-state generation of each of these devices that exists (one query)."""
        rows = self.session.execute(
            select(Device.id, Device.desired_generation).where(Device.id.in_(device_ids))
        ).all()
        return {r[0]: int(r[1]) for r in rows}

    def bump_desired_generation(self, device: Device) -> None:
        """A device's desired state changed: the agent acts on a newer generation only."""
        device.desired_generation += 1


def broker_credentials(session: Session) -> list[tuple[str, str]]:
    """``(device id, password hash)`` of every device, by id: what the broker's files hold."""
    rows = session.execute(select(Device.id, Device.password_hash).order_by(Device.id)).all()
    return [(r[0], r[1]) for r in rows]


def broker_password_hash(session: Session, device_id: str) -> str | None:
    """The stored password hash of one device, None when it is not registered.

    What the embedded broker checks a CONNECT against, as Mosquitto checks its password file.
    """
    return session.scalar(select(Device.password_hash).where(Device.id == device_id))
