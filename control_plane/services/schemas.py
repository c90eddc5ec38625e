"""Request and response bodies of services."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from control_plane.core.schemas import OrmModel

ServiceName = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$")


class ServiceModel(BaseModel):
    """A registered model version the service serves (by its registry name)."""

    model: str = Field(min_length=1, max_length=128, description="Registered model name.")
    version: str = Field(min_length=1, max_length=128)
    max_batch_size: int = Field(
        1, ge=1, le=1024, description="Dynamic batching: the largest batch (1 = off)."
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=1000, description="How long a request may wait for others to batch with."
    )


class ServiceCreate(BaseModel):
    name: str = ServiceName
    type: Literal["online"] = "online"
    models: list[ServiceModel] = Field(min_length=1, max_length=16)
    replicas: int = Field(1, ge=1, le=16, description="Agent processes serving it.")


class ServiceUpdate(BaseModel):
    """A new set of model versions: rolled out one replica at a time."""

    models: list[ServiceModel] = Field(min_length=1, max_length=16)


class ReplicaPublic(OrmModel):
    index: int
    device_id: str
    state: str = Field(description="starting | running | crashed | stopped")
    reason: str
    pid: int | None
    grpc_address: str | None = None
    http_address: str | None = None
    restarts: int
    generation: int = Field(description="The service generation this replica was last given.")
    installed: bool = Field(
        False, description="Every model of the replica's generation is installed and active."
    )
    started_at: dt.datetime | None


class ServicePublic(BaseModel):
    name: str
    type: str
    state: str = Field(description="deploying | running | failed | stopped")
    reason: str
    models: list[ServiceModel]
    generation: int
    replicas: list[ReplicaPublic]
    grpc_addresses: list[str] = Field(
        description="Each running replica's OIP v2 gRPC address (tritonclient.grpc)."
    )
    created_at: dt.datetime
    updated_at: dt.datetime
