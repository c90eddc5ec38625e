"""The long-lived parts of training, visualization and the registry, owned by one app.

``TrainingRuntime`` bundles the job runner (its supervisor thread), the TensorBoard manager (its
monitor thread) and the registry's conversion executor (one background thread: conversions are
CPU-heavy, and one at a time keeps the API responsive on a small machine). The app's lifespan
starts it, which is also when jobs orphaned by a previous run are marked failed; routes reach it
through ``runtime_for(app)``, which starts one lazily when the lifespan did not run (tests build
the app without it).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import update

from control_plane.core.context import AppContext
from control_plane.registry.models import ModelVersion
from control_plane.training.runner import JobRunner
from control_plane.training.tensorboard import VisualizationManager

logger = logging.getLogger(__name__)

_lock = threading.Lock()


class TrainingRuntime:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.runner = JobRunner(ctx)
        self.visualizations = VisualizationManager(
            ctx.settings.resolved_training_dir, ctx.settings.training.tensorboard_idle_s
        )
        self.conversions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._pending: set[Future[Any]] = set()

    @classmethod
    def start(cls, ctx: AppContext) -> TrainingRuntime:
        runtime = cls(ctx)
        runtime._recover_conversions()
        runtime.runner.start()
        return runtime

    def _recover_conversions(self) -> None:
        """Conversions that were running when the control plane stopped will never finish."""
        with self.ctx.sessions() as session:
            result = session.execute(
                update(ModelVersion)
                .where(ModelVersion.state == "converting")
                .values(state="failed", error="the control plane restarted during the conversion")
            )
            session.commit()
            if getattr(result, "rowcount", 0):
                logger.warning("%d interrupted conversions marked failed", result.rowcount)

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future = self.conversions.submit(fn, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def stop(self) -> None:
        self.visualizations.stop_all()
        self.runner.stop()
        self.conversions.shutdown(wait=True, cancel_futures=True)


def runtime_for(app: Any) -> TrainingRuntime:
    """The app's runtime (``app.state.training``), started on first use if needed."""
    with _lock:
        runtime: TrainingRuntime | None = getattr(app.state, "training", None)
        if runtime is None:
            runtime = TrainingRuntime.start(app.state.ctx)
            app.state.training = runtime
        return runtime
