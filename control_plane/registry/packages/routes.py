"""/packages: upload (verified), list, get."""

from __future__ import annotations

from fastapi import APIRouter, Response, UploadFile, status

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.registry.packages.service import PackageService
from control_plane.registry.schemas import PackagePublic

router = APIRouter(prefix="/packages", tags=["packages"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "The same package was already stored."}},
)
def upload_package(
    file: UploadFile, response: Response, session: SessionDep, ctx: ContextDep
) -> PackagePublic:
    """Upload a signed package (multipart field ``file``); it is verified before it is stored."""
    package, created = PackageService(session, ctx).upload(file.file)
    if not created:
        response.status_code = status.HTTP_200_OK
    return PackagePublic.of(package)


@router.get("")
def list_packages(session: SessionDep, ctx: ContextDep) -> list[PackagePublic]:
    return [PackagePublic.of(p) for p in PackageService(session, ctx).list()]


@router.get("/{digest}")
def get_package(digest: str, session: SessionDep, ctx: ContextDep) -> PackagePublic:
    return PackagePublic.of(PackageService(session, ctx).get(digest))
