"""Where a whole, verified capture record goes: the edge service it came from, the dataset that
service names (created on first use), an image sample with the model's top-1 as a pre-label, and
the ``captures`` row saying where it came from.

A tensor record (a ``.npy`` of one input, no batch axis) whose shape is an image's (H x W, H x W x
C or C x H x W with C in 1, 3, 4; a leading axis of 1 is dropped) is rendered to a PNG: values in
[0, 1] are scaled to [0, 255], others clipped to it. Any other tensor is refused: a dataset holds
images.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.captures.models import Capture
from control_plane.core.context import AppContext
from control_plane.core.errors import InvalidRequest, NotFound
from control_plane.datasets.schemas import AnnotationIn, DatasetCreate, DatasetType
from control_plane.datasets.service import DatasetService
from control_plane.registry.packages.service import PackageService
from control_plane.registry.service import ModelService
from control_plane.services.rollouts.service import RolloutService
from control_plane.services.schemas import EdgeTargets
from protos import fleet_capture

logger = logging.getLogger(__name__)


class Refused(Exception):
    """The record cannot be filed (answered REJECTED with this reason)."""


@dataclass(frozen=True)
class Origin:
    """The registry model, edge service and dataset a record belongs to."""

    model: str
    version: str
    service: str | None
    dataset_name: str
    labels: list[str]


def default_dataset_name(model: str) -> str:
    return f"{model}-captures"


def find_origin(
    session: Session, ctx: AppContext, device_id: str, meta: fleet_capture.CaptureMeta
) -> Origin:
    """The edge service whose model the device runs (its target), else none; ``Refused`` for a
    model the control plane does not know."""
    rollouts = RolloutService(session, ctx)
    service = None
    for candidate in rollouts.edge_services():
        model = candidate.spec["models"][0]["model"]
        latest = candidate.rollouts[-1] if candidate.rollouts else None
        package_name = (latest.plan.get("package_name") if latest is not None else None) or model
        if meta.model not in (model, package_name):
            continue
        try:
            if device_id in rollouts.targets(EdgeTargets(**candidate.spec["targets"])):
                service = candidate
                break
        except NotFound:
            continue
    model = service.spec["models"][0]["model"] if service is not None else meta.model
    labels = _model_labels(session, ctx, model, meta)
    capture_spec = (service.spec.get("capture") or {}) if service is not None else {}
    dataset = capture_spec.get("dataset") or default_dataset_name(model)
    return Origin(model, meta.version, service.name if service else None, dataset, labels)


def _model_labels(
    session: Session, ctx: AppContext, model: str, meta: fleet_capture.CaptureMeta
) -> list[str]:
    """The model's class names (its training dataset's, the registry's, else the package's);
    ``Refused`` when neither the registry nor the package store knows this version."""
    try:
        mv = ModelService(session, ctx).get(model, meta.version)
    except NotFound:
        mv = None
    if mv is not None:
        labels = (mv.conversion or {}).get("labels")
        if mv.dataset_id:
            try:
                ds = DatasetService(session, ctx).get(mv.dataset_id)
                return [lb.name for lb in ds.labels]
            except NotFound:
                pass
        return list(labels or [])
    try:
        package = PackageService(session, ctx).find(meta.model, meta.version)
    except NotFound:
        raise Refused(f"unknown model {meta.model} version {meta.version}") from None
    return list(package.manifest.get("labels") or [])


def image_bytes(data: bytes, meta: fleet_capture.CaptureMeta) -> tuple[bytes, str]:
    """(image bytes, file name) of a record: the image as sent, or a tensor rendered to PNG."""
    if meta.input_kind == fleet_capture.IMAGE:
        suffix = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp"}.get(
            meta.media_type, ""
        )
        return data, f"{meta.input_name or 'input'}{suffix}"
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise Refused(f"tensor record is not a .npy file: {exc}") from None
    if array.ndim == 4 and array.shape[0] == 1:  # a batch of one
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image_shaped = (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) and min(
        array.shape[:2]
    ) >= 1
    if not image_shaped or array.dtype.kind not in "fiub":
        raise Refused(f"tensor of shape {list(array.shape)} is not image-shaped")
    values = array.astype(np.float64)
    if array.dtype.kind == "f" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), f"{meta.input_name or 'input'}.png"


def _dataset(session: Session, ctx: AppContext, origin: Origin) -> str:
    """The id of the dataset named by the origin, created (classification, the model's labels)
    when it does not exist yet."""
    datasets = DatasetService(session, ctx)
    for d in datasets.list():
        if d.name == origin.dataset_name:
            return d.id
    spec = DatasetCreate(
        name=origin.dataset_name,
        type=DatasetType.image_classification,
        labels=origin.labels,
        description=f"Captured samples of model {origin.model} from devices (data flywheel).",
    )
    return datasets.create(spec).id


def _predictions(preds: tuple[fleet_capture.Prediction, ...], labels: list[str]) -> list[Any]:
    out = []
    for p in preds:
        label = p.label or (labels[p.index] if 0 <= p.index < len(labels) else str(p.index))
        out.append({"index": p.index, "label": label, "score": p.score})
    return out


def add_shadow(
    session: Session, ctx: AppContext, digest: str, meta: fleet_capture.CaptureMeta
) -> bool:
    """A record already held comes again with a shadow version's answer it lacked (the device
    captured it first for another reason, then the shadow disagreed on it): keep the answer, so
    the review queue's disagreement order finds it. True when the row changed; not committed."""
    if not meta.shadow_version:
        return False
    capture = session.scalar(select(Capture).where(Capture.digest == digest))
    if capture is None or capture.shadow_version:
        return False
    try:
        labels = _model_labels(session, ctx, capture.model, meta)
    except Refused:  # the version is gone from the registry since: indexes stand for labels
        labels = []
    shadow = _predictions(meta.shadow_top_k, labels)
    capture.shadow_version = meta.shadow_version[:128]
    capture.shadow_top_k = shadow
    capture.disagreement = _disagree(capture.top_k or [], shadow)
    return True


def _disagree(top_k: list[Any], shadow: list[Any]) -> bool:
    """The shadow version's top-1 is not the live version's."""
    return bool(shadow and top_k and shadow[0]["index"] != top_k[0]["index"])


def land(
    session: Session,
    ctx: AppContext,
    device_id: str,
    digest: str,
    data: bytes,
    meta: fleet_capture.CaptureMeta,
) -> Capture:
    """File a whole, verified record; committed. ``Refused`` when it cannot be filed."""
    origin = find_origin(session, ctx, device_id, meta)
    image, name = image_bytes(data, meta)
    dataset_id = _dataset(session, ctx, origin)
    top_k = _predictions(meta.top_k, origin.labels)
    shadow = _predictions(meta.shadow_top_k, origin.labels)
    best = top_k[0] if top_k else None
    pre_label = (
        AnnotationIn(
            label=best["label"],
            source="model",
            creator=f"model:{origin.model}:{origin.version}",
            confidence=min(1.0, max(0.0, float(best["score"]))),
        )
        if best is not None
        else None
    )
    try:
        sample, _ = DatasetService(session, ctx).add_sample(
            dataset_id, image, f"captures/{device_id}/{digest[:12]}-{name}", pre_label
        )
    except InvalidRequest as exc:
        session.rollback()
        raise Refused(str(exc)) from None
    captured = dt.datetime.fromtimestamp(meta.captured_at_ms / 1000, tz=dt.UTC)
    capture = Capture(
        id=f"cap-{secrets.token_hex(6)}",
        digest=digest,
        device_id=device_id,
        service_name=origin.service,
        deployment_id=meta.deployment_id[:64],
        model=origin.model,
        version=origin.version,
        reason=meta.reason,
        captured_at=captured,
        input_name=meta.input_name[:200],
        input_kind=meta.input_kind,
        media_type=meta.media_type[:64],
        size=len(data),
        top_k=top_k,
        predicted=best["label"] if best else "",
        confidence=float(best["score"]) if best else 0.0,
        shadow_version=meta.shadow_version[:128],
        shadow_top_k=shadow,
        disagreement=_disagree(top_k, shadow),
        dataset_id=dataset_id,
        sample_id=sample.id,
    )
    session.add(capture)
    session.commit()
    logger.info(
        "capture %s from %s (%s %s, %s) landed in dataset %s as sample %d",
        capture.id,
        device_id,
        origin.model,
        origin.version,
        meta.reason,
        origin.dataset_name,
        sample.id,
    )
    return capture
