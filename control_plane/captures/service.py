"""Captures as people see them: listing, the review queue and its actions, each device's
capture store, and purges.

Reviewing is labelling: ``accept`` turns the model's pre-label into a person's label (the
reviewer as creator), ``correct`` replaces it with the reviewer's, ``drop`` removes the sample
from the dataset while the capture row stays (``dropped``) so the device's record is still held
once by digest and never uploaded again.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.captures.models import Capture, CaptureDeviceState, Improvement
from control_plane.captures.schemas import (
    CaptureLineage,
    CaptureLineageItem,
    DeviceCaptures,
    ReviewAction,
)
from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.datasets.schemas import AnnotationIn
from control_plane.datasets.service import DatasetService
from control_plane.devices.service import DeviceService
from control_plane.registry.service import ModelService
from protos import fleet_capture

logger = logging.getLogger(__name__)

REVIEWED = ("accepted", "corrected")
ORDERS = ("confidence", "disagreement")


@dataclass(frozen=True)
class DatasetRef:
    id: str
    name: str
    labels: list[str]


@dataclass(frozen=True)
class ServiceCaptures:
    counts: dict[str, int]  # state -> captures
    dataset: DatasetRef | None


class ControlPublisher(Protocol):
    """The fleet channel's side of a purge (``fleet/capture_channel.py``)."""

    def publish_control(self, control: fleet_capture.CaptureControl) -> None: ...


class CaptureService:
    def __init__(
        self, session: Session, ctx: AppContext, channel: ControlPublisher | None = None
    ) -> None:
        """``channel`` publishes purge orders; without it a purge is recorded and published when
        the fleet channel next connects."""
        self.session = session
        self.ctx = ctx
        self.channel = channel

    # --- queries -----------------------------------------------------------------------------

    def list(
        self,
        device_id: str | None = None,
        service: str | None = None,
        state: str | None = None,
        dataset: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Capture]:
        query = select(Capture).order_by(Capture.received_at, Capture.id)
        if device_id:
            query = query.where(Capture.device_id == device_id)
        if service:
            query = query.where(Capture.service_name == service)
        if state:
            query = query.where(Capture.state == state)
        if dataset:
            query = query.where(Capture.dataset_id == self.dataset(dataset).id)
        return list(self.session.scalars(query.offset(offset).limit(limit)).all())

    def get(self, capture_id: str) -> Capture:
        capture = self.session.get(Capture, capture_id)
        if capture is None:
            raise NotFound(f"capture {capture_id} not found")
        return capture

    def dataset(self, name_or_id: str) -> DatasetRef:
        """A dataset by id or by name."""
        datasets = DatasetService(self.session, self.ctx)
        for d in datasets.list():
            if name_or_id in (d.id, d.name):
                return DatasetRef(d.id, d.name, [lb.name for lb in d.labels])
        raise NotFound(f"dataset {name_or_id} not found")

    def review_queue(
        self, dataset: str, order: str = "confidence", limit: int = 50
    ) -> tuple[DatasetRef, int, list[Capture]]:
        """The dataset's captures waiting for review: lowest confidence first, or (``order``
        disagreement) those where the shadow version disagreed first, then by confidence."""
        if order not in ORDERS:
            raise InvalidRequest(f"order must be one of {', '.join(ORDERS)}")
        ds = self.dataset(dataset)
        where = (Capture.dataset_id == ds.id, Capture.state == "pending")
        query = select(Capture).where(*where)
        if order == "disagreement":
            query = query.order_by(Capture.disagreement.desc(), Capture.confidence, Capture.id)
        else:
            query = query.order_by(Capture.confidence, Capture.id)
        pending = self.session.scalar(select(func.count()).select_from(Capture).where(*where))
        return ds, int(pending or 0), list(self.session.scalars(query.limit(limit)).all())

    # --- review ------------------------------------------------------------------------------

    def review(self, capture_id: str, action: ReviewAction, reviewer: str) -> Capture:
        capture = self.get(capture_id)
        if capture.state == "dropped" or capture.sample_id is None:
            raise Conflict(f"capture {capture_id} was dropped; its sample is gone")
        datasets = DatasetService(self.session, self.ctx)
        if action.action == "drop":
            datasets.delete_sample(capture.dataset_id, capture.sample_id)
            capture.sample_id = None
            capture.state, capture.label = "dropped", ""
        else:
            label = capture.predicted if action.action == "accept" else action.label
            if not label:
                raise InvalidRequest(f"capture {capture_id} has no model label to accept")
            ann = AnnotationIn(label=label, source="person", creator=reviewer, confidence=1.0)
            datasets.set_annotations(capture.dataset_id, capture.sample_id, [ann])
            capture.state = "accepted" if action.action == "accept" else "corrected"
            capture.label = label
        capture.reviewed_by, capture.reviewed_at = reviewer, utcnow()
        self.session.commit()
        logger.info("capture %s %s by %s", capture_id, capture.state, reviewer)
        return capture

    def service_summary(self, service: str, capture: dict[str, Any] | None) -> ServiceCaptures:
        """An edge service's captures by state, and the dataset they land in (by its
        ``capture`` block: named, else the model's default; None until it exists)."""
        counts = dict(
            self.session.execute(
                select(Capture.state, func.count())
                .where(Capture.service_name == service)
                .group_by(Capture.state)
            ).all()
        )
        dataset = None
        name = (capture or {}).get("dataset")
        if name:
            try:
                dataset = self.dataset(name)
            except NotFound:
                dataset = None
        else:
            first = self.session.scalar(
                select(Capture.dataset_id).where(Capture.service_name == service).limit(1)
            )
            dataset = self.dataset(first) if first else None
        return ServiceCaptures({k: int(v) for k, v in counts.items()}, dataset)

    # --- devices -----------------------------------------------------------------------------

    def device(self, device_id: str) -> DeviceCaptures:
        DeviceService(self.session, self.ctx).get(device_id)
        row = self.session.get(CaptureDeviceState, device_id)
        received = self.session.scalar(
            select(func.count()).select_from(Capture).where(Capture.device_id == device_id)
        )
        return DeviceCaptures(
            device_id=device_id,
            stored_records=row.stored_records if row else 0,
            stored_bytes=row.stored_bytes if row else 0,
            captured_total=row.captured_total if row else 0,
            uploaded_total=row.uploaded_total if row else 0,
            dropped_total=row.dropped_total if row else 0,
            last_purge_id=row.last_purge_id if row else "",
            reported_at=row.reported_at if row else None,
            purge_id=row.purge_id if row else "",
            purge_before_ms=row.purge_before_ms if row else 0,
            rejected_total=row.rejected_total if row else 0,
            received=int(received or 0),
        )

    def purge(self, device_id: str, before: dt.datetime | None = None) -> DeviceCaptures:
        """Tell the device to delete every record captured before ``before`` (default now): a
        retained order on ``captures/ctl`` it applies once (by its id), even if offline now."""
        DeviceService(self.session, self.ctx).get(device_id)
        when = before or utcnow()
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        row = self.session.get(CaptureDeviceState, device_id)
        if row is None:
            row = CaptureDeviceState(
                device_id=device_id,
                stored_records=0,
                stored_bytes=0,
                captured_total=0,
                uploaded_total=0,
                dropped_total=0,
                last_purge_id="",
                rejected_total=0,
            )
            self.session.add(row)
        row.purge_id = f"purge-{secrets.token_hex(6)}"
        row.purge_before_ms = int(when.timestamp() * 1000)
        row.updated_at = utcnow()
        self.session.commit()
        if self.channel is not None:
            self.channel.publish_control(
                fleet_capture.CaptureControl(device_id, row.purge_id, row.purge_before_ms)
            )
        logger.info("capture purge %s of %s before %s", row.purge_id, device_id, when)
        return self.device(device_id)


def lineage(session: Session, ctx: AppContext, package_digest: str) -> CaptureLineage:
    """The registry's lineage of a package and the device captures in its training data: every
    reviewed capture first published in its dataset at or before its dataset version."""
    mv, job, dataset = ModelService(session, ctx).lineage(package_digest)
    captures: list[Capture] = []
    if mv.dataset_id and mv.dataset_version:
        rows = session.scalars(
            select(Capture)
            .where(Capture.published_in.like(f"{mv.dataset_id}/%"))
            .order_by(Capture.captured_at)
        ).all()
        captures = [
            c for c in rows if (c.published_in or "").split("/", 1)[1] <= mv.dataset_version
        ]
    devices: dict[str, int] = {}
    for c in captures:
        devices[c.device_id] = devices.get(c.device_id, 0) + 1
    return CaptureLineage(
        package_digest=package_digest,
        model=mv.name,
        version=mv.version,
        job_id=job.id if job else None,
        dataset_id=dataset["dataset_id"] if dataset else mv.dataset_id,
        dataset_version=dataset["version"] if dataset else mv.dataset_version,
        devices=devices,
        captures=[
            CaptureLineageItem(
                id=c.id,
                device_id=c.device_id,
                digest=c.digest,
                state=c.state,
                label=c.label,
                captured_at=c.captured_at,
            )
            for c in captures
        ],
    )


def list_improvements(session: Session, service: str | None = None) -> list[Improvement]:
    query = select(Improvement).order_by(Improvement.created_at)
    if service:
        query = query.where(Improvement.service_name == service)
    return list(session.scalars(query).all())


def find_improvement(session: Session, improvement_id: str) -> Improvement:
    imp = session.get(Improvement, improvement_id)
    if imp is None:
        raise NotFound(f"improvement {improvement_id} not found")
    return imp
