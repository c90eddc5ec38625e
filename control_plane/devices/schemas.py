"""Request and response bodies, in XCreate / XPublic families (plus the device config bundle)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from control_plane.core.schemas import OrmModel
from control_plane.devices.models import Device

# --- devices ---------------------------------------------------------------------------------


class DeviceCreate(BaseModel):
    name: str = Field("", max_length=200, description="Display name (defaults to the id).")
    device_id: str | None = Field(
        None, description="Wanted id (letters, digits, '.', '_', '-'); generated when absent."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels; deployments target groups by label selector."
    )


class DeviceUpdate(BaseModel):
    """New display name and/or labels (the labels replace the old set as a whole)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    labels: dict[str, str] | None = Field(
        None, description="The device's labels; later deployments by selector match these."
    )


class FleetCounters(BaseModel):
    chunk_requests_dropped: int = Field(
        0, description="Chunk requests dropped because the device had too many waiting."
    )
    telemetry_batches_refused: int = Field(
        0, description="Telemetry batches refused unread (over the size or record limits)."
    )


class DevicePublic(OrmModel):
    id: str
    name: str
    labels: dict[str, Any]
    created_at: dt.datetime
    status: str = Field(description="online | offline | unknown, from the device's status topic.")
    status_at: dt.datetime | None
    reported: dict[str, Any] | None = Field(
        description="The device's last ReportedState (protobuf JSON mapping, field names as-is)."
    )
    reported_at: dt.datetime | None
    desired_generation: int
    telemetry_seq: int = Field(description="Highest telemetry sequence number stored.")
    telemetry_dropped: int
    fleet: FleetCounters = Field(
        default_factory=lambda: FleetCounters(),
        description="What the fleet channel refused from the device since the control plane "
        "started.",
    )

    @classmethod
    def of(cls, device: Device, counters: dict[str, int] | None = None) -> DevicePublic:
        public = cls.model_validate(device)
        public.fleet = FleetCounters(**(counters or {}))
        return public


class MqttBundle(BaseModel):
    url: str = Field(description="Broker URL the device connects to.")
    client_id: str
    username: str
    password: str = Field(description="Shown once; only a hash is stored.")
    topic_prefix: str = Field(description="The device's subtree, e.g. edge/<device id>.")


class DeviceBundle(BaseModel):
    """Everything an agent needs to join the fleet."""

    device_id: str
    mqtt: MqttBundle
    trusted_keys_pem: list[str] = Field(description="Public keys packages must be signed by.")


class DeviceRegistered(BaseModel):
    device: DevicePublic
    bundle: DeviceBundle


# --- packages --------------------------------------------------------------------------------


# --- deployments -----------------------------------------------------------------------------


# --- telemetry -------------------------------------------------------------------------------


class TelemetryRecordPublic(OrmModel):
    seq: int
    kind: str
    payload: str
    recorded_at: dt.datetime | None
    received_at: dt.datetime
