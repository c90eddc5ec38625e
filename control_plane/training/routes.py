"""/training: built-in algorithms, code uploads, jobs, versions, cancel, logs and scalars."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, UploadFile, status
from fastapi.responses import StreamingResponse

from control_plane.core.context import AppContext
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.training.algorithms import BUILTIN
from control_plane.training.deps import RuntimeDep
from control_plane.training.models import TrainingJob
from control_plane.training.runner import FINAL_STATES
from control_plane.training.schemas import (
    AlgorithmPublic,
    CodePublic,
    JobCreate,
    JobPublic,
    JobRerun,
    JobState,
    ScalarsPublic,
)
from control_plane.training.service import TrainingService

router = APIRouter(prefix="/training", tags=["training"])

_FOLLOW_POLL_S = 0.25


@router.get("/algorithms")
def list_algorithms() -> list[AlgorithmPublic]:
    """Built-in algorithms (no code needed) and their default hyperparameters."""
    return [
        AlgorithmPublic(name=a.name, description=a.description, input=a.input, defaults=a.defaults)
        for a in BUILTIN.values()
    ]


@router.post("/code", status_code=status.HTTP_201_CREATED)
def upload_code(
    file: UploadFile, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep
) -> CodePublic:
    """Upload a zip of a training code folder; name its boot file when creating a job."""
    code_id, files = TrainingService(session, ctx, runtime.runner).upload_code(file.file)
    return CodePublic(code_id=code_id, files=files)


@router.post("/jobs", status_code=status.HTTP_201_CREATED)
def create_job(
    spec: JobCreate, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep
) -> JobPublic:
    """Queue a job; it runs as a worker process when a slot is free."""
    return JobPublic.model_validate(TrainingService(session, ctx, runtime.runner).create(spec))


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    ctx: ContextDep,
    runtime: RuntimeDep,
    name: str | None = None,
    state: JobState | None = None,
) -> list[JobPublic]:
    service = TrainingService(session, ctx, runtime.runner)
    jobs = service.list(name, state.value if state else None)
    return [JobPublic.model_validate(j) for j in jobs]


@router.get("/jobs/{job_id}")
def get_job(job_id: str, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep) -> JobPublic:
    return JobPublic.model_validate(TrainingService(session, ctx, runtime.runner).get(job_id))


@router.post("/jobs/{job_id}/versions", status_code=status.HTTP_201_CREATED)
def rerun_job(
    job_id: str, changes: JobRerun, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep
) -> JobPublic:
    """A new version of the job (same name and input) with changed hyperparameters."""
    job = TrainingService(session, ctx, runtime.runner).rerun(job_id, changes)
    return JobPublic.model_validate(job)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep) -> JobPublic:
    """Cancel a queued or running job; returns when its processes are gone."""
    return JobPublic.model_validate(TrainingService(session, ctx, runtime.runner).cancel(job_id))


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: str, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep) -> None:
    """Delete a finished job and its work folder; 409 while a model version descends from it."""
    TrainingService(session, ctx, runtime.runner).delete(job_id)


def _follow(ctx: AppContext, job_id: str, path_str: str, follow: bool) -> Iterator[bytes]:
    """The log from the start; with ``follow``, keep sending new lines until the job ends."""
    offset = 0
    while True:
        with ctx.sessions() as session:
            job = session.get(TrainingJob, job_id)
            done = job is None or job.state in FINAL_STATES
        try:
            with open(path_str, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            yield data
        if not follow or (done and not data):
            return
        if not data:
            time.sleep(_FOLLOW_POLL_S)


@router.get(
    "/jobs/{job_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def job_logs(
    job_id: str,
    session: SessionDep,
    ctx: ContextDep,
    runtime: RuntimeDep,
    follow: Annotated[bool, Query(description="Stream until the job ends.")] = False,
) -> StreamingResponse:
    """The job's stdout and stderr; ``follow=true`` streams live (chunked text/plain)."""
    path = TrainingService(session, ctx, runtime.runner).log_path(job_id)
    return StreamingResponse(
        _follow(ctx, job_id, str(path), follow), media_type="text/plain; charset=utf-8"
    )


@router.get("/jobs/{job_id}/scalars")
def job_scalars(
    job_id: str, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep
) -> ScalarsPublic:
    """Scalar series from the job's TensorBoard event files, by run and tag."""
    runs = TrainingService(session, ctx, runtime.runner).scalars(job_id)
    return ScalarsPublic.model_validate({"job_id": job_id, "runs": runs})
