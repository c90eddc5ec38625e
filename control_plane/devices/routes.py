"""/devices: register, list, get, update (name, labels), delete; a device's telemetry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.core.errors import InvalidRequest
from control_plane.devices.schemas import (
    DeviceCreate,
    DevicePublic,
    DeviceRegistered,
    DeviceUpdate,
    TelemetryRecordPublic,
)
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService

router = APIRouter(prefix="/devices", tags=["devices"])


def _parse_selector(raw: list[str]) -> dict[str, str]:
    selector = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"label selector {item!r} must be key=value")
        selector[key] = value
    return selector


@router.post("", status_code=status.HTTP_201_CREATED)
def register_device(body: DeviceCreate, session: SessionDep, ctx: ContextDep) -> DeviceRegistered:
    """Register a device. The response holds its broker password: it is shown only once."""
    service = DeviceService(session, ctx)
    reg = service.register(body.name, body.labels, body.device_id)
    bundle = service.bundle(reg)
    return DeviceRegistered(device=DevicePublic.of(reg.device), bundle=bundle)


@router.get("")
def list_devices(
    session: SessionDep,
    ctx: ContextDep,
    label: Annotated[list[str], Query(description="key=value; repeat to AND them")] = [],  # noqa: B006
) -> list[DevicePublic]:
    service = DeviceService(session, ctx)
    devices = service.list(_parse_selector(label) or None)
    return [DevicePublic.of(d, service.counters(d.id)) for d in devices]


@router.get("/{device_id}")
def get_device(device_id: str, session: SessionDep, ctx: ContextDep) -> DevicePublic:
    service = DeviceService(session, ctx)
    return DevicePublic.of(service.get(device_id), service.counters(device_id))


@router.patch("/{device_id}")
def update_device(
    device_id: str, body: DeviceUpdate, session: SessionDep, ctx: ContextDep
) -> DevicePublic:
    """Rename the device or replace its labels."""
    service = DeviceService(session, ctx)
    device = service.update(device_id, body.name, body.labels)
    return DevicePublic.of(device, service.counters(device_id))


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_device(device_id: str, session: SessionDep, ctx: ContextDep) -> None:
    """Delete the device and revoke its broker credentials."""
    DeviceService(session, ctx).delete(device_id)


@router.get("/{device_id}/telemetry")
def device_telemetry(
    device_id: str,
    session: SessionDep,
    ctx: ContextDep,
    after_seq: int = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[TelemetryRecordPublic]:
    records = TelemetryService(session, ctx).list(device_id, after_seq, limit)
    return [TelemetryRecordPublic.model_validate(r) for r in records]
