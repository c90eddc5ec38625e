"""The registry's conversion executor: one background thread, owned by the app.

Conversions are CPU-heavy child processes (``registry/worker.py``); one at a time keeps the API
responsive on a small machine. Starting it marks conversions that a previous run left in the
``converting`` state failed, since nothing will ever finish them (unless other control-plane
replicas are alive: those conversions may be theirs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import update

from control_plane.core.context import AppContext, app_state
from control_plane.core.replicas import live_replicas
from control_plane.registry.models import ModelVersion

logger = logging.getLogger(__name__)


class Conversions:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._pending: set[Future[Any]] = set()

    @classmethod
    def start(cls, ctx: AppContext) -> Conversions:
        conversions = cls(ctx)
        conversions._recover()
        return conversions

    def _recover(self) -> None:
        with self.ctx.sessions() as session:
            replicas = self.ctx.settings.replicas
            if replicas.id is not None and live_replicas(session, replicas.lease_s) - {replicas.id}:
                # Another replica is alive: the conversions in progress may be its own.
                logger.info("other replicas are running: conversions left as they are")
                return
            result = session.execute(
                update(ModelVersion)
                .where(ModelVersion.state == "converting")
                .values(state="failed", error="the control plane restarted during the conversion")
            )
            session.commit()
            if getattr(result, "rowcount", 0):
                logger.warning("%d interrupted conversions marked failed", result.rowcount)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future = self.executor.submit(fn, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def conversions_for(app: Any) -> Conversions:
    """The app's Conversions (``app.state.conversions``), started on first use if needed."""
    return app_state(app, "conversions", Conversions.start)
