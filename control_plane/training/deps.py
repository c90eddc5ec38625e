"""Typed dependency for the training runtime (job runner, TensorBoard manager)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from control_plane.training.runtime import TrainingRuntime, runtime_for


def get_runtime(request: Request) -> TrainingRuntime:
    return runtime_for(request.app)


RuntimeDep = Annotated[TrainingRuntime, Depends(get_runtime)]
