"""Request and response bodies, in XCreate / XPublic families (plus the device config bundle)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.db.models import Deployment, DeploymentTarget, Device, Package


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- devices ---------------------------------------------------------------------------------


class DeviceCreate(BaseModel):
    name: str = Field("", max_length=200, description="Display name (defaults to the id).")
    device_id: str | None = Field(
        None, description="Wanted id (letters, digits, '.', '_', '-'); generated when absent."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels; deployments target groups by label selector."
    )


class DevicePublic(_Public):
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

    @classmethod
    def of(cls, device: Device) -> DevicePublic:
        return cls.model_validate(device)


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


class PackagePublic(_Public):
    digest: str
    name: str
    version: str
    size: int
    key_id: str
    chunk_size: int
    chunk_count: int
    created_at: dt.datetime
    manifest: dict[str, Any]

    @classmethod
    def of(cls, package: Package) -> PackagePublic:
        return cls.model_validate(package)


# --- deployments -----------------------------------------------------------------------------


class DeploymentCreate(BaseModel):
    package_digest: str | None = Field(None, description="The package by digest, or ...")
    package_name: str | None = Field(None, description="... by name and version.")
    package_version: str | None = None
    device_id: str | None = Field(None, description="Target one device, or ...")
    selector: dict[str, str] | None = Field(
        None, description="... every device whose labels match all of these."
    )


class DeploymentTargetPublic(_Public):
    device_id: str
    state: str = Field(description="pending | in_progress | installed | failed | superseded")
    reason: str
    step: str
    chunks_done: int
    chunks_total: int
    updated_at: dt.datetime


class DeploymentPublic(BaseModel):
    id: str
    package_digest: str
    package_name: str
    package_version: str
    target: dict[str, Any]
    created_at: dt.datetime
    targets: list[DeploymentTargetPublic]
    summary: dict[str, int] = Field(description="Number of targeted devices in each state.")

    @classmethod
    def of(cls, d: Deployment) -> DeploymentPublic:
        targets: list[DeploymentTarget] = sorted(d.targets, key=lambda t: t.device_id)
        summary: dict[str, int] = {}
        for t in targets:
            summary[t.state] = summary.get(t.state, 0) + 1
        return cls(
            id=d.id,
            package_digest=d.package_digest,
            package_name=d.package.name,
            package_version=d.package.version,
            target=d.target,
            created_at=d.created_at,
            targets=[DeploymentTargetPublic.model_validate(t) for t in targets],
            summary=summary,
        )


# --- telemetry -------------------------------------------------------------------------------


class TelemetryRecordPublic(_Public):
    seq: int
    kind: str
    payload: str
    recorded_at: dt.datetime | None
    received_at: dt.datetime


class Health(BaseModel):
    status: str
    broker_connected: bool
