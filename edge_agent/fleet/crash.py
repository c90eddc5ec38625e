"""Named points where tests make the agent SIGKILL itself during a fleet-driven deployment.

The same ``EDGE_AGENT_CRASH_AT`` variable as ``edge_agent.installer.CRASH_POINTS``; these points
cover what happens around the installer (download, assembly, result bookkeeping).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

FLEET_CRASH_POINTS = (
    "after_generation_write",
    "after_chunk_write",
    "before_assemble",
    "after_assemble",
    "before_install",
    "after_install",
    "after_result_write",
)


def checkpoint(point: str) -> None:
    if os.environ.get("EDGE_AGENT_CRASH_AT") == point:
        log.warning("crash point %s reached: killing the agent", point)
        os.kill(os.getpid(), signal.SIGKILL)
