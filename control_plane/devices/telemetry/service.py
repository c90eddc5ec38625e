"""Telemetry records from devices, deduplicated by their per-device sequence number.

Devices deliver their outbox at least once (QoS 1, resent after reconnects); keeping only records
above the highest sequence number already stored turns that into exactly once, provided a device
sends in sequence order, which the protocol requires.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import NotFound
from control_plane.devices.models import Device, TelemetryRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingRecord:
    seq: int
    kind: str
    timestamp_ms: int
    payload_json: str


class TelemetryService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    def record_batch(self, device_id: str, records: list[IncomingRecord], dropped: int) -> int:
        """Store the records not seen before; returns how many were new."""
        device = self.session.get(Device, device_id)
        if device is None:
            logger.warning("telemetry from unknown device %s ignored", device_id)
            return 0
        accepted = 0
        high = device.telemetry_seq
        for rec in sorted(records, key=lambda r: r.seq):
            if rec.seq <= high:
                continue
            self.session.add(
                TelemetryRecord(
                    device_id=device_id,
                    seq=rec.seq,
                    kind=rec.kind,
                    payload=rec.payload_json,
                    recorded_at=dt.datetime.fromtimestamp(rec.timestamp_ms / 1000, dt.UTC)
                    if rec.timestamp_ms
                    else None,
                )
            )
            high = rec.seq
            accepted += 1
        device.telemetry_seq = high
        device.telemetry_dropped = max(device.telemetry_dropped, dropped)
        self.session.commit()
        if accepted < len(records):
            logger.debug(
                "device %s: %d duplicate telemetry record(s) ignored",
                device_id,
                len(records) - accepted,
            )
        return accepted

    def list(self, device_id: str, after_seq: int = 0, limit: int = 1000) -> list[TelemetryRecord]:
        if self.session.get(Device, device_id) is None:
            raise NotFound(f"device {device_id} not found")
        return list(
            self.session.scalars(
                select(TelemetryRecord)
                .where(TelemetryRecord.device_id == device_id, TelemetryRecord.seq > after_seq)
                .order_by(TelemetryRecord.seq)
                .limit(limit)
            ).all()
        )
