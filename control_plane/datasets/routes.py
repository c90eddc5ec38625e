"""/datasets: datasets, label sets, imports, samples and annotations.

Routes only translate: they read the request, call one service method and convert the result.
Upload routes use ``UploadLimitRoute`` so an oversized request is refused from its
Content-Length (or, without one, as soon as the body grows past the limit) before the body is
parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.types import Message

from control_plane.core.auth import Role, needs_role
from control_plane.core.context import AppContext
from control_plane.core.deps import ContextDep, CurrentUser, SessionDep
from control_plane.core.errors import PayloadTooLarge
from control_plane.datasets.imports import ImportOptions, ImportService
from control_plane.datasets.models import Annotation, Dataset, Sample
from control_plane.datasets.schemas import (
    AnnotationPublic,
    AnnotationsSet,
    Box,
    BulkLabel,
    BulkResult,
    DatasetCreate,
    DatasetPublic,
    DatasetStats,
    FolderImport,
    ImportFormat,
    ImportReport,
    LabelCreate,
    LabelMerge,
    LabelUpdate,
    SamplePage,
    SamplePublic,
    SampleSplit,
    Split,
)
from control_plane.datasets.service import (
    SAMPLE_FIELDS,
    DatasetService,
    SampleFilter,
    SampleListing,
)


class UploadLimitRoute(APIRoute):
    """Refuses request bodies larger than ``dataset_max_upload_bytes`` before parsing them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            if request.method != "POST":
                return await handler(request)
            ctx: AppContext = request.app.state.ctx
            limit = ctx.settings.datasets.max_upload_bytes
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")
            seen = 0
            receive = request.receive

            async def counting() -> Message:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
                return message

            try:
                return await handler(Request(request.scope, counting))
            except HTTPException as exc:
                # FastAPI turns any failure while reading the form into 400 "error parsing the
                # body"; when the limit was the failure, the caller must see the 413.
                if isinstance(exc.__cause__, PayloadTooLarge):
                    raise exc.__cause__ from None
                raise

        return limited


# Ids beyond 2**53 cannot name a row (and overflow SQLite's INTEGER): refused as 422.
SampleId = Annotated[int, Path(ge=1, le=2**53)]

router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=UploadLimitRoute)
# Labelling writes (annotations, splits) are open to labellers; other writes need an engineer.
LABELLING = needs_role(Role.labeller)


def dataset_public(service: DatasetService, d: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=d.id,
        name=d.name,
        type=d.type,  # type: ignore[arg-type]
        multi_label=d.multi_label,
        description=d.description,
        created_at=d.created_at,
        labels=sorted(lb.name for lb in d.labels),
        sample_count=service.sample_count(d.id),
    )


def annotation_public(a: Annotation) -> AnnotationPublic:
    box = a.box
    return AnnotationPublic(
        id=a.id,
        label=a.label.name,
        box=Box(x=box[0], y=box[1], w=box[2], h=box[3]) if box else None,
        source=a.source,
        creator=a.creator,
        confidence=a.confidence,
        created_at=a.created_at,
    )


def sample_public(base: str, s: Sample) -> SamplePublic:
    return SamplePublic(
        id=s.id,
        digest=s.digest,
        source_name=s.source_name,
        media_type=s.media_type,
        size=s.size,
        width=s.width,
        height=s.height,
        split=Split(s.split) if s.split else None,
        created_at=s.created_at,
        annotations=[annotation_public(a) for a in s.annotations],
        content_url=f"{base}/samples/{s.id}/content",
        thumbnail_url=f"{base}/samples/{s.id}/thumbnail",
    )


def sample_page_response(base: str, listing: SampleListing, offset: int, limit: int) -> Response:
    """The page as JSON, built from plain rows.

    Constructing a ``SamplePublic`` per sample, which FastAPI then validated and serialized
    again, cost more than the page's queries. Here the rows become dicts of JSON types (zipped
    with ``SAMPLE_FIELDS``; annotation rows unpacked in ``ANNOTATION_FIELDS`` order, since
    attribute access on a ``Row`` is a lookup by name), which pydantic-core writes to bytes
    exactly as the model would (datetimes included). The declared ``response_model`` still
    documents the page in OpenAPI, and ``tests/datasets/test_listing.py`` holds every listed
    item equal to the single-sample document (built through ``SamplePublic``).
    """
    anns = listing.annotations
    items = []
    for row in listing.samples:
        item = dict(zip(SAMPLE_FIELDS, row, strict=True))
        sid = item["id"]
        item["annotations"] = [
            {
                "id": aid,
                "label": label,
                "box": None if x is None else {"x": x, "y": y, "w": w, "h": h},
                "source": source,
                "creator": creator,
                "confidence": confidence,
                "created_at": created,
            }
            for _, aid, label, x, y, w, h, source, creator, confidence, created in anns.get(sid, ())
        ]
        item["content_url"] = f"{base}/samples/{sid}/content"
        item["thumbnail_url"] = f"{base}/samples/{sid}/thumbnail"
        items.append(item)
    page = {"total": listing.total, "offset": offset, "limit": limit, "items": items}
    return Response(to_json(page), media_type="application/json")


def _base(request: Request, dataset_id: str) -> str:
    return request.url_for("get_dataset", dataset_id=dataset_id).path


# --- datasets --------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED)
def create_dataset(spec: DatasetCreate, session: SessionDep, ctx: ContextDep) -> DatasetPublic:
    """Create a dataset of a labeling type, optionally with its initial label set."""
    service = DatasetService(session, ctx)
    return dataset_public(service, service.create(spec))


@router.get("")
def list_datasets(session: SessionDep, ctx: ContextDep) -> list[DatasetPublic]:
    service = DatasetService(session, ctx)
    return [dataset_public(service, d) for d in service.list()]


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, session: SessionDep, ctx: ContextDep) -> DatasetPublic:
    service = DatasetService(session, ctx)
    return dataset_public(service, service.get(dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, session: SessionDep, ctx: ContextDep) -> None:
    """Delete with samples and versions; 409 while a version is used by a job or model."""
    DatasetService(session, ctx).delete(dataset_id)


@router.get("/{dataset_id}/stats")
def dataset_stats(dataset_id: str, session: SessionDep, ctx: ContextDep) -> DatasetStats:
    """Sample counts (labeled, unlabeled, per fixed split) and per-label statistics."""
    return DatasetService(session, ctx).stats(dataset_id)


# --- label set -------------------------------------------------------------------------------


@router.post("/{dataset_id}/labels", status_code=status.HTTP_201_CREATED)
def add_label(
    dataset_id: str, spec: LabelCreate, session: SessionDep, ctx: ContextDep
) -> DatasetPublic:
    service = DatasetService(session, ctx)
    return dataset_public(service, service.add_label(dataset_id, spec.name))


@router.patch("/{dataset_id}/labels/{name}")
def rename_label(
    dataset_id: str, name: str, spec: LabelUpdate, session: SessionDep, ctx: ContextDep
) -> DatasetPublic:
    """Rename a label; its annotations follow. 409 if the new name exists (merge instead)."""
    service = DatasetService(session, ctx)
    return dataset_public(service, service.rename_label(dataset_id, name, spec.name))


@router.post("/{dataset_id}/labels/{name}/merge")
def merge_label(
    dataset_id: str, name: str, spec: LabelMerge, session: SessionDep, ctx: ContextDep
) -> DatasetPublic:
    """Move the label's annotations to ``into`` and remove the label."""
    service = DatasetService(session, ctx)
    return dataset_public(service, service.merge_label(dataset_id, name, spec.into))


@router.delete("/{dataset_id}/labels/{name}")
def delete_label(dataset_id: str, name: str, session: SessionDep, ctx: ContextDep) -> DatasetPublic:
    """Remove the label and every annotation that uses it."""
    service = DatasetService(session, ctx)
    return dataset_public(service, service.delete_label(dataset_id, name))


# --- imports ---------------------------------------------------------------------------------


@router.post("/{dataset_id}/files")
def upload_files(
    dataset_id: str,
    files: Annotated[list[UploadFile], File(description="Image files (up to 1000 per request).")],
    session: SessionDep,
    ctx: ContextDep,
    label: Annotated[str | None, Form(description="Label every file gets (optional).")] = None,
    add_labels: Annotated[bool, Form()] = True,
    annotated_by: Annotated[str, Form(max_length=200)] = "upload",
) -> ImportReport:
    """Upload many files (multipart field ``files``). Duplicates and bad files are reported per
    file; the rest is imported."""
    uploads = [(f.filename or "", f.file) for f in files]
    options = ImportOptions(add_labels=add_labels, annotated_by=annotated_by)
    return ImportService(session, ctx).import_uploads(dataset_id, uploads, label, options)


@router.post("/{dataset_id}/archive")
def upload_archive(
    dataset_id: str,
    file: Annotated[UploadFile, File(description="A zip archive.")],
    session: SessionDep,
    ctx: ContextDep,
    format: Annotated[ImportFormat, Form()] = ImportFormat.imagefolder,
    annotation_file: Annotated[str | None, Form(max_length=4096)] = None,
    add_labels: Annotated[bool, Form()] = True,
    annotated_by: Annotated[str, Form(max_length=200)] = "import",
) -> ImportReport:
    """Upload a zip in ImageFolder, COCO, VOC, YOLO or ModelArts-manifest layout. Unsafe or
    oversized archives and malformed annotation files are refused whole (nothing imported)."""
    options = ImportOptions(add_labels=add_labels, annotated_by=annotated_by)
    return ImportService(session, ctx).import_archive(
        dataset_id, file.file, format, annotation_file, options
    )


@router.post("/{dataset_id}/imports")
def import_folder(
    dataset_id: str, spec: FolderImport, session: SessionDep, ctx: ContextDep
) -> ImportReport:
    """Import a server-side folder (inside ``dataset_import_roots``) in any import format."""
    return ImportService(session, ctx).import_folder(dataset_id, spec)


# --- samples and labeling --------------------------------------------------------------------


@router.get("/{dataset_id}/samples", response_model=SamplePage)
def list_samples(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    label: Annotated[str | None, Query(description="Only samples carrying this label.")] = None,
    unlabeled: Annotated[bool, Query(description="Only samples without annotations.")] = False,
    split: Annotated[Split | None, Query(description="Only samples with this fixed split.")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """A page of samples (in id order) with their annotations and file / thumbnail URLs."""
    flt = SampleFilter(label=label, unlabeled=unlabeled, split=split.value if split else None)
    listing = DatasetService(session, ctx).list_samples(dataset_id, flt, offset, limit)
    return sample_page_response(_base(request, dataset_id), listing, offset, limit)


@router.get("/{dataset_id}/samples/{sample_id}")
def get_sample(
    dataset_id: str, sample_id: SampleId, request: Request, session: SessionDep, ctx: ContextDep
) -> SamplePublic:
    sample = DatasetService(session, ctx).sample(dataset_id, sample_id)
    return sample_public(_base(request, dataset_id), sample)


@router.delete("/{dataset_id}/samples/{sample_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_sample(
    dataset_id: str, sample_id: SampleId, session: SessionDep, ctx: ContextDep
) -> None:
    DatasetService(session, ctx).delete_sample(dataset_id, sample_id)


@router.get(
    "/{dataset_id}/samples/{sample_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}}},
)
def sample_content(
    dataset_id: str, sample_id: SampleId, session: SessionDep, ctx: ContextDep
) -> FileResponse:
    path, media_type = DatasetService(session, ctx).sample_file(dataset_id, sample_id)
    return FileResponse(path, media_type=media_type)


@router.get(
    "/{dataset_id}/samples/{sample_id}/thumbnail",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
def sample_thumbnail(
    dataset_id: str, sample_id: SampleId, session: SessionDep, ctx: ContextDep
) -> FileResponse:
    """A PNG thumbnail (longest side ``dataset_thumbnail_size``), made on first request."""
    return FileResponse(
        DatasetService(session, ctx).thumbnail(dataset_id, sample_id), media_type="image/png"
    )


@router.put("/{dataset_id}/samples/{sample_id}/annotations", openapi_extra=LABELLING)
def set_annotations(
    dataset_id: str,
    sample_id: SampleId,
    spec: AnnotationsSet,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
) -> SamplePublic:
    """Replace the sample's labels or boxes; every annotation is checked before any is saved.
    A ``person`` annotation records the caller as its ``creator`` (whatever the body says)."""
    anns = [
        a.model_copy(update={"creator": user.name}) if a.source == "person" else a
        for a in spec.annotations
    ]
    sample = DatasetService(session, ctx).set_annotations(dataset_id, sample_id, anns)
    return sample_public(_base(request, dataset_id), sample)


@router.put("/{dataset_id}/samples/{sample_id}/split", openapi_extra=LABELLING)
def set_split(
    dataset_id: str,
    sample_id: SampleId,
    spec: SampleSplit,
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
) -> SamplePublic:
    """Fix the sample's split (or null: drawn at publish time)."""
    split = spec.split.value if spec.split else None
    sample = DatasetService(session, ctx).set_split(dataset_id, sample_id, split)
    return sample_public(_base(request, dataset_id), sample)


@router.post("/{dataset_id}/annotations/bulk", openapi_extra=LABELLING)
def bulk_label(
    dataset_id: str, spec: BulkLabel, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> BulkResult:
    """One classification labeling operation on many samples, all or nothing. A ``person``
    operation records the caller as ``creator``."""
    if spec.source == "person":
        spec = spec.model_copy(update={"creator": user.name})
    return BulkResult(updated=DatasetService(session, ctx).bulk_label(dataset_id, spec))
