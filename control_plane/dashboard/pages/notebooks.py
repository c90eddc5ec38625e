"""Notebooks: the list with the create form (dataset version, example), and a notebook's page:
open JupyterLab through the proxy, stop / start, and export a notebook to training code."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router, version_choices
from control_plane.dashboard.render import page
from control_plane.notebooks.deps import ServersDep
from control_plane.notebooks.service import NotebookService, examples

router = page_router()
ACTIVE = ("starting",)


@router.get("/notebooks")
def notebooks(
    request: Request, user: PageUser, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> HTMLResponse:
    inputs = version_choices(session, ctx)
    return page(
        request,
        "notebooks_list.html",
        user,
        notebooks=NotebookService(session, ctx, servers).list(),
        examples=examples(),
        inputs=inputs,
    )


@router.get("/notebooks/{notebook_id}")
def notebook(
    notebook_id: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    servers: ServersDep,
) -> HTMLResponse:
    service = NotebookService(session, ctx, servers)
    # Looking at the page is not work in the notebook: it does not hold off the idle stop.
    nb = service.get(notebook_id, touch=False)
    files = service.files(notebook_id)
    return page(
        request,
        "notebooks_detail.html",
        user,
        nb=nb,
        live=nb.state in ACTIVE,
        data_url=service.data_url(nb),
        files=files,
        ipynbs=[f.path for f in files if f.path.endswith(".ipynb")],
    )
