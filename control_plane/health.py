"""Unauthenticated liveness probe."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel


class Health(BaseModel):
    status: str
    broker_connected: bool


router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> Health:
    fleet = getattr(request.app.state, "fleet", None)
    return Health(status="ok", broker_connected=bool(fleet and fleet.connected.is_set()))
