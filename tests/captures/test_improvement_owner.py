"""Two control-plane replicas on one database: one walks each improvement, a survivor takes over.

Real SQLite file shared by two application contexts with their own replica ids, real heartbeat
rows, the real engine's ``tick``. What a step does (publish, train, ...) is not under test here
(``test_flywheel_e2e.py`` runs it): each replica's improver records which improvement it was
asked to advance and moves it one step, as the real one does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from control_plane.captures.improve import ImprovementEngine, claim_improvements
from control_plane.captures.models import Improvement
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade, utcnow
from control_plane.core.replicas import Replica, beat
from control_plane.core.settings import Settings

STEPS = ["publish", "train", "register", "rollout", "done"]


class StepRecorder:
    """Stands in for the step logic: notes the call and moves the row one step on."""

    def __init__(self, session: Session, calls: list[tuple[str, str, str]], me: str) -> None:
        self.session, self.calls, self.me = session, calls, me

    def tick(self, imp: Improvement) -> None:
        self.calls.append((self.me, imp.id, imp.step))
        imp.step = STEPS[STEPS.index(imp.step) + 1]
        if imp.step == "done":
            imp.state = "succeeded"
        self.session.commit()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    contexts: dict[str, AppContext] = {}
    for me in ("a", "b"):
        settings = Settings(
            api_token="t" * 32,
            mqtt_password="p" * 32,
            data_dir=tmp_path / me,
            database_url=url,
            dev_mode=True,
            replica_id=me,
            mqtt_url="mqtt://127.0.0.1:1",  # never connected here: no fleet service runs
        )
        contexts[me] = AppContext.from_settings(settings)
    upgrade(contexts["a"].engine)
    calls: list[tuple[str, str, str]] = []
    engines = {
        me: ImprovementEngine(ctx, lambda session, me=me: StepRecorder(session, calls, me))
        for me, ctx in contexts.items()
    }
    yield {"ctx": contexts, "engines": engines, "calls": calls}
    for ctx in contexts.values():
        ctx.close()


def _add(ctx: AppContext, imp_id: str, owner: str | None) -> None:
    with ctx.sessions() as session:
        session.add(
            Improvement(
                id=imp_id,
                service_name="cams",
                model="digits",
                from_version="1",
                state="running",
                step="publish",
                steps={},
                error="",
                owner=owner,
            )
        )
        session.commit()


def _heartbeat(ctx: AppContext, me: str, age_s: float = 0) -> None:
    with ctx.sessions() as session:
        beat(session, me)
        if age_s:
            past = utcnow() - dt.timedelta(seconds=age_s)
            session.execute(update(Replica).where(Replica.id == me).values(heartbeat_at=past))
            session.commit()


def _owner(ctx: AppContext, imp_id: str) -> str | None:
    with ctx.sessions() as session:
        imp = session.get(Improvement, imp_id)
        assert imp is not None
        return imp.owner


def test_only_the_owner_advances_and_a_survivor_takes_over(replicas: dict[str, Any]) -> None:
    ctx, engines, calls = replicas["ctx"], replicas["engines"], replicas["calls"]
    _heartbeat(ctx["a"], "a")
    _heartbeat(ctx["b"], "b")
    _add(ctx["a"], "imp-1", "a")

    # Both replicas tick, in either order: only the owner works on it, one step per tick.
    engines["b"].tick()
    engines["a"].tick()
    engines["b"].tick()
    assert calls == [("a", "imp-1", "publish")]
    assert _owner(ctx["b"], "imp-1") == "a"

    # The owner's heartbeat stops: b claims the row and resumes from the recorded step.
    _heartbeat(ctx["a"], "a", age_s=3600)
    engines["b"].tick()
    assert calls[-1] == ("b", "imp-1", "train")
    assert _owner(ctx["b"], "imp-1") == "b"
    engines["a"].tick()  # a, back, does not take it again: b is alive and owns it
    assert [c[0] for c in calls] == ["a", "b"]


def test_an_ownerless_improvement_is_claimed_once(replicas: dict[str, Any]) -> None:
    ctx = replicas["ctx"]
    _heartbeat(ctx["a"], "a")
    _heartbeat(ctx["b"], "b")
    _add(ctx["a"], "imp-2", None)  # started before replicas were configured
    with ctx["a"].sessions() as session:
        assert claim_improvements(session, "a", 15.0) == ["imp-2"]
    with ctx["b"].sessions() as session:
        assert claim_improvements(session, "b", 15.0) == []  # a is alive and owns it now
    assert _owner(ctx["a"], "imp-2") == "a"
