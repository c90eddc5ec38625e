"""/models: the model registry (register from a job, import an upload, versions, tags,
package download, delete), /lineage/{package digest}, and /registry/keys (signing keys and
their rotation)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, UploadFile, status
from fastapi.responses import StreamingResponse

from control_plane.core.auth import Role, needs_role
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.core.errors import InvalidRequest
from control_plane.registry.deps import ConversionsDep
from control_plane.registry.keys import service as keys
from control_plane.registry.schemas import (
    Lineage,
    ModelRegister,
    ModelSummary,
    ModelVersionPublic,
    ModelVersionUpdate,
    SigningKeyPublic,
)
from control_plane.registry.service import ModelService
from control_plane.training.schemas import JobPublic

router = APIRouter(tags=["models"])


def _json_field(text: str | None, what: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequest(f"{what} must be JSON") from None


@router.post("/models", status_code=status.HTTP_202_ACCEPTED)
def register_model(
    spec: ModelRegister, session: SessionDep, ctx: ContextDep, conversions: ConversionsDep
) -> ModelVersionPublic:
    """Register a succeeded job's model; it converts in the background (``state``)."""
    return ModelVersionPublic.model_validate(
        ModelService(session, ctx, conversions).register_job(spec)
    )


@router.post("/models/import", status_code=status.HTTP_202_ACCEPTED)
def import_model(
    file: UploadFile,
    name: Annotated[str, Form(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")],
    session: SessionDep,
    ctx: ContextDep,
    conversions: ConversionsDep,
    kind: Annotated[str | None, Form()] = None,
    version: Annotated[str | None, Form(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = None,
    description: Annotated[str, Form()] = "",
    tags: Annotated[str | None, Form(description="JSON object")] = None,
    labels: Annotated[str | None, Form(description="JSON list of class names")] = None,
    input_shapes: Annotated[str | None, Form(description='JSON: {"data": [-1, 3, 32, 32]}')] = None,
    targets: Annotated[str | None, Form(description="JSON list of conversion targets")] = None,
    preprocessing: Annotated[
        str | None, Form(description='JSON: {"input": "image", "color": "L", ...}')
    ] = None,
    postprocessing: Annotated[
        str | None, Form(description='JSON: {"output": "logits", "softmax": true, "top_k": 3}')
    ] = None,
) -> ModelVersionPublic:
    """Import ONNX / TFLite / Keras files, or a zip of a SavedModel, an MXNet pair or a
    ModelArts model folder; converted and signed in the background."""
    mv = ModelService(session, ctx, conversions).import_upload(
        file.file,
        file.filename or "model",
        name,
        kind=kind,
        version=version,
        description=description,
        tags=_json_field(tags, "tags"),
        labels=_json_field(labels, "labels"),
        input_shapes=_json_field(input_shapes, "input_shapes"),
        targets=_json_field(targets, "targets"),
        preprocessing=_json_field(preprocessing, "preprocessing"),
        postprocessing=_json_field(postprocessing, "postprocessing"),
    )
    return ModelVersionPublic.model_validate(mv)


@router.get("/models")
def list_models(session: SessionDep, ctx: ContextDep) -> list[ModelSummary]:
    by_name: dict[str, list[str]] = {}
    for mv in ModelService(session, ctx).list_versions():
        by_name.setdefault(mv.name, []).append(mv.version)
    return [ModelSummary(name=n, versions=v, latest=v[-1]) for n, v in sorted(by_name.items())]


@router.get("/models/{name}/versions")
def list_versions(name: str, session: SessionDep, ctx: ContextDep) -> list[ModelVersionPublic]:
    return [
        ModelVersionPublic.model_validate(mv)
        for mv in ModelService(session, ctx).list_versions(name)
    ]


@router.get("/models/{name}/versions/{version}")
def get_version(
    name: str, version: str, session: SessionDep, ctx: ContextDep
) -> ModelVersionPublic:
    return ModelVersionPublic.model_validate(ModelService(session, ctx).get(name, version))


@router.patch("/models/{name}/versions/{version}")
def update_version(
    name: str,
    version: str,
    changes: ModelVersionUpdate,
    session: SessionDep,
    ctx: ContextDep,
) -> ModelVersionPublic:
    """Change the description or replace the tags."""
    mv = ModelService(session, ctx).update(name, version, changes)
    return ModelVersionPublic.model_validate(mv)


@router.delete("/models/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(name: str, version: str, session: SessionDep, ctx: ContextDep) -> None:
    """Delete the version and its package; 409 while a deployment uses the package."""
    ModelService(session, ctx).delete(name, version)


@router.get(
    "/models/{name}/versions/{version}/package",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_package(
    name: str, version: str, session: SessionDep, ctx: ContextDep
) -> StreamingResponse:
    """The signed package file (``<sha256>.edgepkg``)."""
    package, chunks = ModelService(session, ctx).package_chunks(name, version)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{package.digest}.edgepkg"',
            "Content-Length": str(package.size),
        },
    )


@router.get("/lineage/{package_digest}")
def lineage(package_digest: str, session: SessionDep, ctx: ContextDep) -> Lineage:
    """From a package back to its model version, training job and dataset version."""
    mv, job, dataset = ModelService(session, ctx).lineage(package_digest)
    return Lineage(
        package_digest=package_digest,
        model=ModelVersionPublic.model_validate(mv),
        job=JobPublic.model_validate(job) if job else None,
        dataset=dataset,
    )


@router.get("/registry/keys")
def list_signing_keys(ctx: ContextDep) -> list[SigningKeyPublic]:
    """The registry's signing keys, newest first: the current one and the retired ones."""
    return [SigningKeyPublic.model_validate(k, from_attributes=True) for k in keys.list_keys(ctx)]


@router.post(
    "/registry/keys/rotate",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=needs_role(Role.admin),
)
def rotate_signing_key(ctx: ContextDep) -> SigningKeyPublic:
    """Make a new key sign new packages; the previous one is retired with the grace period
    (``key_grace_period_s``). Every device receives the new trust set over the fleet channel."""
    view = keys.rotate(ctx)
    ctx.publisher.publish_trust()
    return SigningKeyPublic.model_validate(view, from_attributes=True)
