"""The long-lived parts of training and visualization, owned by one app.

``TrainingRuntime`` bundles the job runner (its supervisor thread) and the TensorBoard manager
(its monitor thread). The app's lifespan starts it, which is also when jobs orphaned by a previous
run are marked failed; routes reach it through ``runtime_for(app)``, which starts one lazily when
the lifespan did not run (tests build the app without it).
"""

from __future__ import annotations

import logging
from typing import Any

from control_plane.core.context import AppContext, app_state
from control_plane.training.runner import JobRunner
from control_plane.training.tensorboard import VisualizationManager

logger = logging.getLogger(__name__)


class TrainingRuntime:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.runner = JobRunner(ctx)
        self.visualizations = VisualizationManager(
            ctx.settings.resolved_training_dir, ctx.settings.training.tensorboard_idle_s
        )

    @classmethod
    def start(cls, ctx: AppContext) -> TrainingRuntime:
        runtime = cls(ctx)
        runtime.runner.start()
        return runtime

    def stop(self) -> None:
        self.visualizations.stop_all()
        self.runner.stop()


def runtime_for(app: Any) -> TrainingRuntime:
    """The app's TrainingRuntime (``app.state.training``), started on first use if needed."""
    return app_state(app, "training", TrainingRuntime.start)
