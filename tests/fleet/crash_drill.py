"""One crash drill run: a fleet-driven install of mlp 2 over mlp 1, the agent SIGKILLed at a point.

Shared by tests/fleet/test_crash.py (a fixed list of points) and scripts/fleet-crash-drill
(random points, many runs). A run passes when the agent died at the point, every restart
serves version 1 or 2 (never nothing), and the deployment reaches a final state (INSTALLED)
that the control plane shows, with the agent serving version 2.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent import crash_points
from tests.agent.agent_process import AgentProcess
from tests.fleet.conftest import Fleet, Packages
from tests.fleet.helpers import serving

# The agent's own lists, so the drill covers every point the agent defines, new ones included.
INSTALLER_POINTS = crash_points.INSTALL_POINTS
FLEET_POINTS = crash_points.FLEET_POINTS
ALL_POINTS = FLEET_POINTS + INSTALLER_POINTS


@dataclass
class DrillResult:
    point: str
    killed: bool
    after_restart: str
    final_state: str
    final_serving: str
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.killed
            and self.after_restart in ("v1", "v2")
            and self.final_state == "installed"
            and self.final_serving == "v2"
        )


def run_point(
    fleet: Fleet,
    packages: Packages,
    start_agent: Callable[..., AgentProcess],
    digest: str,
    point: str,
    device_id: str,
) -> DrillResult:
    t0 = time.monotonic()
    bundle = fleet.register(device_id)
    agent = start_agent(bundle)
    agent.start(env={"EDGE_AGENT_CRASH_AT": point})
    dep = fleet.deploy(digest, device_id=device_id)
    try:
        rc = agent.wait_exit(60)
    except Exception:
        agent.kill()
        rc = 0
    killed = rc == -signal.SIGKILL
    agent.start()
    after_restart = serving(agent.address, packages.models)
    final: dict[str, Any] = {}
    try:
        final = fleet.wait_final(dep, [device_id], timeout=60)[device_id]
    except AssertionError:
        final = fleet.targets(dep).get(device_id, {})
    result = DrillResult(
        point,
        killed,
        after_restart,
        str(final.get("state", "?")),
        serving(agent.address, packages.models),
        time.monotonic() - t0,
    )
    agent.stop()
    return result
