"""Telemetry records from devices, deduplicated by their per-device sequence number.

Devices deliver their outbox at least once (QoS 1, resent after reconnects); storing a record
only when its (device, sequence number) is not stored yet turns that into exactly once, whatever
order the broker delivers batches in.
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

    def record_batch(
        self, device_id: str, records: list[IncomingRecord], dropped: int, commit: bool = True
    ) -> int:
        """Store the records not seen before; returns how many were new. ``commit=False``: the
        caller commits (the fleet channel stores many batches in one transaction).

        A record is new when its (device, sequence number) is not stored yet, whatever arrived
        before it: a broker may deliver a device's queued batches out of order (Mosquitto does,
        to a client that reconnects to a backlog), so "above the highest stored" would drop the
        older batches that come late.
        """
        device = self.session.get(Device, device_id)
        if device is None:
            logger.warning("telemetry from unknown device %s ignored", device_id)
            return 0
        by_seq = {r.seq: r for r in records}
        stored = set(
            self.session.scalars(
                select(TelemetryRecord.seq).where(
                    TelemetryRecord.device_id == device_id, TelemetryRecord.seq.in_(list(by_seq))
                )
            ).all()
        )
        fresh = [by_seq[s] for s in sorted(by_seq) if s not in stored]
        for rec in fresh:
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
        if fresh:
            device.telemetry_seq = max(device.telemetry_seq, fresh[-1].seq)
        device.telemetry_dropped = max(device.telemetry_dropped, dropped)
        if commit:
            self.session.commit()
        if len(fresh) < len(records):
            logger.debug(
                "device %s: %d duplicate telemetry record(s) ignored",
                device_id,
                len(records) - len(fresh),
            )
        return len(fresh)

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

    def latest(self, device_id: str, kind: str, limit: int = 100) -> list[TelemetryRecord]:
        """The device's last ``limit`` records of one kind, newest first (none for an unknown
        device: a reader of several devices' figures should not fail on one that is gone)."""
        return list(
            self.session.scalars(
                select(TelemetryRecord)
                .where(TelemetryRecord.device_id == device_id, TelemetryRecord.kind == kind)
                .order_by(TelemetryRecord.seq.desc())
                .limit(limit)
            ).all()
        )
