"""/datasets/{id}/versions: publish, list, get, export and delete immutable dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.datasets.models import DatasetVersion
from control_plane.datasets.schemas import ExportFormat, VersionCreate, VersionPublic, VersionUse
from control_plane.datasets.versions.service import VersionService

router = APIRouter(prefix="/datasets/{dataset_id}/versions", tags=["dataset versions"])


def version_public(service: VersionService, v: DatasetVersion) -> VersionPublic:
    return VersionPublic(
        name=v.name,
        dataset_id=v.dataset_id,
        description=v.description,
        train_ratio=v.train_ratio,
        seed=v.seed,
        sample_count=v.sample_count,
        train_count=v.train_count,
        validation_count=v.validation_count,
        label_stats=v.label_stats,
        digest=v.digest,
        created_at=v.created_at,
        data_url=str(service.path(v).resolve()),
        used_by=[VersionUse.model_validate(u) for u in v.uses],
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def publish_version(
    dataset_id: str, spec: VersionCreate, session: SessionDep, ctx: ContextDep
) -> VersionPublic:
    """Publish the labeled samples as the next version (V001, V002, ...), split by ratio and
    seed (stratified by label for classification)."""
    service = VersionService(session, ctx)
    return version_public(service, service.publish(dataset_id, spec))


@router.get("")
def list_versions(dataset_id: str, session: SessionDep, ctx: ContextDep) -> list[VersionPublic]:
    service = VersionService(session, ctx)
    return [version_public(service, v) for v in service.list(dataset_id)]


@router.get("/{name}")
def get_version(dataset_id: str, name: str, session: SessionDep, ctx: ContextDep) -> VersionPublic:
    service = VersionService(session, ctx)
    return version_public(service, service.get(dataset_id, name))


@router.get(
    "/{name}/manifest",
    response_class=FileResponse,
    responses={200: {"content": {"application/jsonl": {}}}},
)
def version_manifest(
    dataset_id: str, name: str, session: SessionDep, ctx: ContextDep
) -> FileResponse:
    """The version's manifest.jsonl (ModelArts fields)."""
    service = VersionService(session, ctx)
    path = service.path(service.get(dataset_id, name)) / "manifest.jsonl"
    return FileResponse(path, media_type="application/jsonl")


@router.get(
    "/{name}/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def export_version(
    dataset_id: str,
    name: str,
    session: SessionDep,
    ctx: ContextDep,
    format: Annotated[ExportFormat, Query()] = ExportFormat.manifest,
) -> FileResponse:
    """A zip of the version as ImageFolder, COCO, VOC, YOLO or its own manifest layout."""
    path: Path = VersionService(session, ctx).export(dataset_id, name, format)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"{dataset_id}-{name}-{format.value}.zip",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(dataset_id: str, name: str, session: SessionDep, ctx: ContextDep) -> None:
    """Delete a version; 409 while a training job or model uses it."""
    VersionService(session, ctx).delete(dataset_id, name)
