"""The dashboard's routes: every page module's router, the static files, and how a page answers
a visitor without a session (303 to sign-in) or without the role (a 403 page)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from control_plane.dashboard.deps import PageForbidden, PasswordChangeRequired, SignInRequired
from control_plane.dashboard.pages import (
    auth,
    datasets,
    devices,
    models,
    overview,
    training,
    users,
)
from control_plane.dashboard.render import HERE, page

router = APIRouter(include_in_schema=False)
for module in (auth, overview, datasets, training, models, devices, users):
    router.include_router(module.router)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


async def _sign_in(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(exc.location, status_code=303)


async def _change_password(_request: Request, _exc: Exception) -> Response:
    return RedirectResponse("/ui/account?must_change=1", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    return page(request, "error.html", exc.user, status_code=403, message=str(exc))


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(PasswordChangeRequired, _change_password)
    app.add_exception_handler(PageForbidden, _forbidden)
