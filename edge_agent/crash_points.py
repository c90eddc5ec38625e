"""Named points where the agent kills itself (SIGKILL) when ``EDGE_AGENT_CRASH_AT`` names one.

Crash safety is a claim about every instant of an install, so it is tested at every instant that
matters: tests and drills (tests/agent/test_crash_recovery.py, tests/fleet/test_crash.py,
scripts/crash-drill, scripts/fleet-crash-drill) start a real agent with the variable set, let it
die at the point, and check that the restart serves the old version or the new one, never
neither. Every point is declared here, whichever wing passes it, so the drills can cover all of
them and a misspelt point fails loudly instead of silently never firing.

The variable is read at each point (not cached): a point costs one dictionary lookup, and only
on install and download paths, never per inference request.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV_VAR = "EDGE_AGENT_CRASH_AT"

#: The installer's steps, in order (``edge_agent.install.installer``).
INSTALL_STEPS = ("verify", "stage", "load", "self_test", "activate", "commit")

#: Points of one install. The order is part of the drills' reproducibility: scripts/crash-drill
#: picks from this tuple with a seeded random generator.
INSTALL_POINTS = (
    *(f"before_{s}" for s in INSTALL_STEPS),
    "after_verify",
    "after_stage",
    "after_load",
    "after_self_test",
    "after_activate",
    "after_state_write",
    "after_commit",
)

#: Points around the installer when the fleet drives it (download, assembly, result records).
FLEET_POINTS = (
    "after_generation_write",
    "after_chunk_write",
    "before_assemble",
    "after_assemble",
    "before_install",
    "after_install",
    "after_result_write",
)

#: Points of the capture store (``edge_agent.capture.store``): a record fsynced under its
#: temporary name, not yet renamed.
CAPTURE_POINTS = ("capture_before_rename",)

_KNOWN = frozenset(INSTALL_POINTS) | frozenset(FLEET_POINTS) | frozenset(CAPTURE_POINTS)


def crash_point(point: str) -> None:
    """Die here, by SIGKILL, when ``EDGE_AGENT_CRASH_AT`` names ``point``; else do nothing."""
    if point not in _KNOWN:
        raise ValueError(f"undeclared crash point {point!r}: add it to edge_agent/crash_points.py")
    if os.environ.get(ENV_VAR) == point:
        log.warning("crash point %s reached: killing the agent", point)
        os.kill(os.getpid(), signal.SIGKILL)
