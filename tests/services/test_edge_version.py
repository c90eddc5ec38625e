"""Which version an edge service's devices run, as an improvement of its model starts from: the
one the service names, unless its latest rollout failed or was rolled back (real SQLite)."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.core.context import AppContext
from control_plane.services.models import Rollout, Service
from control_plane.services.service import ServiceManager


@pytest.mark.parametrize(
    ("state", "stable", "runs"),
    [
        ("running", {"version": "1", "package_digest": "a" * 64}, "2"),
        ("succeeded", {"version": "2", "package_digest": "b" * 64}, "2"),
        ("failed", {"version": "1", "package_digest": "a" * 64}, "1"),
        ("rolled_back", {"version": "1", "package_digest": "a" * 64}, "1"),
        ("rolled_back", None, "2"),  # nothing to go back to: still the named one
    ],
)
def test_the_version_the_devices_run(
    ctx: AppContext, state: str, stable: dict[str, Any] | None, runs: str
) -> None:
    with ctx.sessions() as session:
        spec: dict[str, Any] = {"models": [{"model": "m", "version": "2"}], "targets": {}}
        if stable:
            spec["stable"] = stable
        session.add(Service(name="cams", type="edge", spec=spec))
        session.add(
            Rollout(
                id="ro-1", service_name="cams", number=1, model="m", version="2",
                package_digest="b" * 64, state=state, plan={},
            )
        )  # fmt: skip
        session.commit()
        manager = ServiceManager(session, ctx, supervisor=None)  # type: ignore[arg-type]
        service = session.get(Service, "cams")
        assert service is not None
        assert manager.edge_version(service) == runs
