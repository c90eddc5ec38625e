"""kill -9 of the agent at named points of a fleet-driven install (``EDGE_AGENT_CRASH_AT``)."""

from __future__ import annotations

import os
import random

from edge_agent import crash_points
from tests.fleet.conftest import Fleet, Packages
from tests.fleet.crash_drill import ALL_POINTS, FLEET_POINTS, run_point

#: The suite's points: every fleet-specific one plus the installer's step boundaries.
SUITE_POINTS = (
    *FLEET_POINTS,
    "after_verify",
    "after_stage",
    "after_self_test",
    "after_activate",
    "after_state_write",
)


def test_suite_points_exist_in_the_agent() -> None:
    """A renamed point would otherwise never fire, and its test would pass without a crash."""
    assert set(SUITE_POINTS) <= set(crash_points.FLEET_POINTS) | set(crash_points.INSTALL_POINTS)


def test_kill_at_named_points(fleet: Fleet, packages: Packages, start_fleet_agent) -> None:
    runs = int(os.environ.get("FLEET_CRASH_DRILL_RUNS", "0"))
    if runs:  # scripts/fleet-crash-drill: random points, many runs
        rng = random.Random(os.environ.get("FLEET_CRASH_DRILL_SEED"))
        points = [rng.choice(ALL_POINTS) for _ in range(runs)]
    else:
        points = list(SUITE_POINTS)
    assert len(points) >= 10 or runs
    digest = fleet.upload(packages.v2)
    results = []
    for i, point in enumerate(points):
        r = run_point(fleet, packages, start_fleet_agent, digest, point, f"crash-{i}")
        results.append(r)
        print(
            f"{'ok ' if r.ok else 'BAD'} {point:24s} killed={r.killed} restart={r.after_restart} "
            f"final={r.final_state}/{r.final_serving} {r.seconds:.1f}s",
            flush=True,
        )
    bad = [r for r in results if not r.ok]
    print(
        f"\ncrash drill: {len(results)} runs, {len(results) - len(bad)} ok, {len(bad)} violations"
    )
    assert not bad, bad
