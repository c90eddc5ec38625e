"""/notebooks: managed JupyterLab servers, their examples and files, and export to training code."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.notebooks.deps import ServersDep
from control_plane.notebooks.models import Notebook
from control_plane.notebooks.schemas import (
    ExamplePublic,
    ExportCreate,
    ExportPublic,
    NotebookCreate,
    NotebookFile,
    NotebookPublic,
)
from control_plane.notebooks.service import NotebookService, examples

router = APIRouter(prefix="/notebooks", tags=["notebooks"])


def _public(service: NotebookService, nb: Notebook) -> NotebookPublic:
    out = NotebookPublic.model_validate(nb)
    out.url = f"/notebooks/{nb.id}/lab"
    data = service.data_url(nb)
    out.data_url = str(data) if data is not None else None
    return out


@router.get("/examples")
def list_examples() -> list[ExamplePublic]:
    """Shipped example notebooks; name one in `example` when creating a notebook."""
    return examples()


@router.post("", status_code=status.HTTP_201_CREATED)
def create_notebook(
    spec: NotebookCreate,
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    servers: ServersDep,
) -> NotebookPublic:
    """Start a JupyterLab server; returns at once (`starting`), `running` once it answers."""
    service = NotebookService(session, ctx, servers)
    api_url = str(request.base_url).rstrip("/")
    return _public(service, service.create(spec, api_url))


@router.get("")
def list_notebooks(
    session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> list[NotebookPublic]:
    service = NotebookService(session, ctx, servers)
    return [_public(service, nb) for nb in service.list()]


@router.get("/{notebook_id}")
def get_notebook(
    notebook_id: str, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> NotebookPublic:
    service = NotebookService(session, ctx, servers)
    return _public(service, service.get(notebook_id))


@router.post("/{notebook_id}/stop")
def stop_notebook(
    notebook_id: str, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> NotebookPublic:
    """Stop the server (its files stay); returns once its processes are gone."""
    service = NotebookService(session, ctx, servers)
    return _public(service, service.stop(notebook_id))


@router.post("/{notebook_id}/start")
def start_notebook(
    notebook_id: str, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> NotebookPublic:
    """Start a stopped notebook again on the same work folder."""
    service = NotebookService(session, ctx, servers)
    return _public(service, service.start(notebook_id))


@router.delete("/{notebook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_notebook(
    notebook_id: str, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> Response:
    """Stop the server and delete its work folder."""
    NotebookService(session, ctx, servers).delete(notebook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{notebook_id}/files")
def list_files(
    notebook_id: str, session: SessionDep, ctx: ContextDep, servers: ServersDep
) -> list[NotebookFile]:
    """Files of the work folder (without Jupyter's checkpoints and hidden folders)."""
    return NotebookService(session, ctx, servers).files(notebook_id)


@router.post("/{notebook_id}/export", status_code=status.HTTP_201_CREATED)
def export_notebook(
    notebook_id: str,
    spec: ExportCreate,
    session: SessionDep,
    ctx: ContextDep,
    servers: ServersDep,
) -> ExportPublic:
    """Convert a notebook into a script (nbconvert) and store it with the work folder's code as
    training code (`code_id`, `boot_file`), ready for `POST /training/jobs`."""
    return NotebookService(session, ctx, servers).export(notebook_id, spec)
