"""Typed dependencies of the captures routes (and the dashboard's review pages): the capture
service with the app's fleet channel for purges, and the improver with the runtimes its steps
start work on (the job runner, the conversion executor, the services' supervisor)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from control_plane.captures.improve import Improver
from control_plane.captures.service import CaptureService
from control_plane.core.context import AppContext
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.registry.deps import ConversionsDep
from control_plane.registry.service import ModelService
from control_plane.services.deps import SupervisorDep
from control_plane.services.service import ServiceManager
from control_plane.training.deps import RuntimeDep
from control_plane.training.service import TrainingService


def get_captures(request: Request, session: SessionDep, ctx: ContextDep) -> CaptureService:
    return CaptureService(session, ctx, getattr(request.app.state, "capture_channel", None))


def get_improver(
    session: SessionDep,
    ctx: ContextDep,
    runtime: RuntimeDep,
    conversions: ConversionsDep,
    supervisor: SupervisorDep,
) -> Improver:
    return make_improver(session, ctx, runtime.runner, conversions, supervisor)


def make_improver(
    session: Session, ctx: AppContext, runner: object, conversions: object, supervisor: object
) -> Improver:
    """An improver over one session (the routes' and the engine's, which the app builds).

    The runtimes are typed ``object`` here: their classes live in other domains' internals
    (``training.runner``, ``registry.conversions``, ``services.supervisor``), which this domain
    may not import (tests/control_plane/test_layering.py); the services they are handed to
    declare them."""
    return Improver(
        session,
        ctx,
        TrainingService(session, ctx, runner),  # type: ignore[arg-type]
        ModelService(session, ctx, conversions),  # type: ignore[arg-type]
        ServiceManager(session, ctx, supervisor),  # type: ignore[arg-type]
    )


CapturesDep = Annotated[CaptureService, Depends(get_captures)]
ImproverDep = Annotated[Improver, Depends(get_improver)]
