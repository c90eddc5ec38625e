"""The fleet channel's capture handler (``fleet/capture_channel.py``): chunks staged in the
database until a record is whole, verified by its digest, filed once per digest, and each
device's store as it reports it.

The answers follow ``protos/fleet_capture.proto``:

- a chunk of a record already held (by digest, from any device): STORED at once, whatever the
  chunk; the device deletes its copy (exactly once by digest). A shadow version's answer the
  held row lacks is kept (``landing.add_shadow``);
- the last chunk of a record with chunks still missing: PARTIAL, ``next_index`` the first one
  missing; a chunk that makes a record whole: STORED once it is verified and filed;
- REJECTED, the staged chunks dropped: a device id that is not the topic's, a device the
  registry does not know, a digest that does not match the data, a model the control plane does
  not know, data that cannot become an image sample.

Other chunks get no answer: the device waits for the one its last chunk brings. Staging rows
survive a restart, and chunks of one record may be handled by different replicas.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.captures import landing
from control_plane.captures.models import Capture, CaptureChunk, CaptureDeviceState, CaptureUpload
from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.devices.service import DeviceService
from protos import fleet_capture as wire

logger = logging.getLogger(__name__)


def meta_to_dict(meta: wire.CaptureMeta) -> dict[str, Any]:
    def preds(ps: tuple[wire.Prediction, ...]) -> list[dict[str, Any]]:
        return [{"index": p.index, "label": p.label, "score": p.score} for p in ps]

    return {
        "model": meta.model,
        "version": meta.version,
        "reason": meta.reason,
        "captured_at_ms": meta.captured_at_ms,
        "input_name": meta.input_name,
        "input_kind": meta.input_kind,
        "media_type": meta.media_type,
        "deployment_id": meta.deployment_id,
        "top_k": preds(meta.top_k),
        "shadow_version": meta.shadow_version,
        "shadow_top_k": preds(meta.shadow_top_k),
    }


def meta_from_dict(raw: dict[str, Any]) -> wire.CaptureMeta:
    def preds(ps: list[dict[str, Any]]) -> tuple[wire.Prediction, ...]:
        return tuple(wire.Prediction(p["index"], p["label"], p["score"]) for p in ps)

    return wire.CaptureMeta(
        model=raw["model"],
        version=raw["version"],
        reason=raw["reason"],
        captured_at_ms=raw["captured_at_ms"],
        input_name=raw["input_name"],
        input_kind=raw["input_kind"],
        media_type=raw["media_type"],
        deployment_id=raw["deployment_id"],
        top_k=preds(raw["top_k"]),
        shadow_version=raw["shadow_version"],
        shadow_top_k=preds(raw["shadow_top_k"]),
    )


class CaptureReceiver:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # --- CaptureHandler -----------------------------------------------------------------------

    def on_chunk(self, device_id: str, chunk: wire.CaptureChunk) -> wire.CaptureAck | None:
        def reject(reason: str) -> wire.CaptureAck:
            logger.warning("capture %s from %s rejected: %s", chunk.digest[:12], device_id, reason)
            return wire.CaptureAck(chunk.digest, wire.REJECTED, reason=reason)

        if chunk.device_id and chunk.device_id != device_id:
            return reject(f"device id {chunk.device_id!r} is not the topic's {device_id!r}")
        with self.ctx.sessions() as session:
            if DeviceService(session, self.ctx).find(device_id) is None:
                return reject(f"unknown device {device_id}")
            if self._held(session, chunk.digest):
                meta = chunk.meta
                if meta is not None and landing.add_shadow(session, self.ctx, chunk.digest, meta):
                    session.commit()
                self._unstage(session, device_id, chunk.digest)
                return wire.CaptureAck(chunk.digest, wire.STORED)
            if chunk.count == 1 and chunk.meta is not None:
                return self._file_whole(session, device_id, chunk)
            have = self._stage(session, device_id, chunk)
            missing = [i for i in range(chunk.count) if i not in have]
            if missing:
                if chunk.index == chunk.count - 1:
                    return wire.CaptureAck(chunk.digest, wire.PARTIAL, next_index=missing[0])
                return None
            try:
                self._file(session, device_id, chunk.digest)
            except landing.Refused as exc:
                session.rollback()
                self._unstage(session, device_id, chunk.digest)
                self._count_rejected(session, device_id)
                return reject(str(exc))
            except IntegrityError:  # filed meanwhile by another replica: held once
                session.rollback()
                self._unstage(session, device_id, chunk.digest)
            return wire.CaptureAck(chunk.digest, wire.STORED)

    def _file_whole(
        self, session: Session, device_id: str, chunk: wire.CaptureChunk
    ) -> wire.CaptureAck:
        """A record of one chunk: verified and filed at once, nothing staged."""
        assert chunk.meta is not None
        if wire.digest_of(chunk.data) != chunk.digest:
            self._count_rejected(session, device_id)
            reason = "digest mismatch: the chunks do not make the record"
            return wire.CaptureAck(chunk.digest, wire.REJECTED, reason=reason)
        try:
            landing.land(session, self.ctx, device_id, chunk.digest, chunk.data, chunk.meta)
        except landing.Refused as exc:
            session.rollback()
            self._count_rejected(session, device_id)
            logger.warning("capture %s from %s rejected: %s", chunk.digest[:12], device_id, exc)
            return wire.CaptureAck(chunk.digest, wire.REJECTED, reason=str(exc))
        except IntegrityError:  # filed meanwhile by another replica: held once
            session.rollback()
        return wire.CaptureAck(chunk.digest, wire.STORED)

    def on_refused(self, device_id: str, digest: str, reason: str) -> None:
        with self.ctx.sessions() as session:
            if DeviceService(session, self.ctx).find(device_id) is None:
                return
            self._unstage(session, device_id, digest)
            self._count_rejected(session, device_id)

    def on_status(self, device_id: str, status: wire.CaptureStatus) -> None:
        with self.ctx.sessions() as session:
            if DeviceService(session, self.ctx).find(device_id) is None:
                return
            row = self._device_row(session, device_id)
            row.stored_records = status.stored_records
            row.stored_bytes = status.stored_bytes
            row.captured_total = status.captured_total
            row.uploaded_total = status.uploaded_total
            row.dropped_total = status.dropped_total
            row.last_purge_id = status.last_purge_id[:64]
            row.reported_at = utcnow()
            row.updated_at = utcnow()
            session.commit()

    def controls(self) -> list[wire.CaptureControl]:
        with self.ctx.sessions() as session:
            rows = session.scalars(
                select(CaptureDeviceState).where(CaptureDeviceState.purge_id != "")
            ).all()
            return [wire.CaptureControl(r.device_id, r.purge_id, r.purge_before_ms) for r in rows]

    # --- staging ------------------------------------------------------------------------------

    @staticmethod
    def _held(session: Session, digest: str) -> bool:
        return session.scalar(select(Capture.id).where(Capture.digest == digest)) is not None

    def _stage(self, session: Session, device_id: str, chunk: wire.CaptureChunk) -> set[int]:
        """Record the chunk (once); the indexes now held for the record."""
        key = (device_id, chunk.digest)
        upload = session.get(CaptureUpload, key)
        if upload is not None and (upload.size, upload.count) != (chunk.size, chunk.count):
            # Same digest, another size: the earlier chunks cannot belong with this one.
            self._unstage(session, device_id, chunk.digest)
            upload = None
        if upload is None:
            upload = CaptureUpload(
                device_id=device_id, digest=chunk.digest, size=chunk.size, count=chunk.count
            )
            session.add(upload)
        if chunk.meta is not None:
            upload.meta = meta_to_dict(chunk.meta)
        upload.updated_at = utcnow()
        if session.get(CaptureChunk, (device_id, chunk.digest, chunk.index)) is None:
            session.add(
                CaptureChunk(
                    device_id=device_id, digest=chunk.digest, index=chunk.index, data=chunk.data
                )
            )
        try:
            session.commit()
        except IntegrityError:  # the same chunk (or record) staged meanwhile by another replica
            session.rollback()
        return set(
            session.scalars(
                select(CaptureChunk.index).where(
                    CaptureChunk.device_id == device_id, CaptureChunk.digest == chunk.digest
                )
            )
        )

    @staticmethod
    def _unstage(session: Session, device_id: str, digest: str) -> None:
        for table in (CaptureChunk, CaptureUpload):
            session.execute(
                delete(table).where(table.device_id == device_id, table.digest == digest)
            )
        session.commit()

    def _file(self, session: Session, device_id: str, digest: str) -> None:
        upload = session.get(CaptureUpload, (device_id, digest))
        assert upload is not None
        parts = session.scalars(
            select(CaptureChunk)
            .where(CaptureChunk.device_id == device_id, CaptureChunk.digest == digest)
            .order_by(CaptureChunk.index)
        ).all()
        data = b"".join(p.data for p in parts)
        if len(data) != upload.size or hashlib.sha256(data).hexdigest() != digest:
            raise landing.Refused("digest mismatch: the chunks do not make the record")
        if upload.meta is None:
            raise landing.Refused("the record came without its meta")
        meta = meta_from_dict(upload.meta)
        landing.land(session, self.ctx, device_id, digest, data, meta)
        self._unstage(session, device_id, digest)

    # --- per device ---------------------------------------------------------------------------

    @staticmethod
    def _device_row(session: Session, device_id: str) -> CaptureDeviceState:
        row = session.get(CaptureDeviceState, device_id)
        if row is None:
            row = CaptureDeviceState(
                device_id=device_id,
                stored_records=0,
                stored_bytes=0,
                captured_total=0,
                uploaded_total=0,
                dropped_total=0,
                last_purge_id="",
                purge_id="",
                purge_before_ms=0,
                rejected_total=0,
            )
            session.add(row)
            session.flush()
        return row

    def _count_rejected(self, session: Session, device_id: str) -> None:
        self._device_row(session, device_id).rejected_total += 1
        session.commit()
