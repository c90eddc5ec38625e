"""Which control-plane replica runs each online service's agent processes.

Agent processes live on one machine, so with several ``control-plane serve`` replicas exactly
one of them, the service's *owner*, starts and supervises a service's agents; every replica's
REST proxy reaches them at the owner's ``owner_address``. The replica that creates a service
owns it. When the owner's heartbeat stops (``core/replicas.py``), the first survivor to claim
the row takes the service over: the claim is one conditional ``UPDATE`` (the old owner still in
the row), so on PostgreSQL two survivors claiming at once cannot both win.

A survivor on the same machine first ends the old owner's agents (they run in their own
process session and outlive a control plane killed with SIGKILL); it then gives each agent a
new broker password, so one left running on a lost machine cannot come back as the same device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from control_plane.core.replicas import Replica, live_replicas
from control_plane.services.models import Service

logger = logging.getLogger(__name__)

#: How long a survivor waits for the old owner's agents to exit after SIGKILL.
END_WAIT_S = 5.0


def claim_orphans(
    session: Session, me: str, address: str, lease_s: float
) -> list[tuple[str, str | None]]:
    """Claim every cloud service (online, or batch on a cloud agent) whose owner is unset or
    silent for ``lease_s``; returns ``(service name, previous owner)`` of each one won."""
    alive = live_replicas(session, lease_s) | {me}
    rows = session.execute(
        select(Service.name, Service.owner, Service.type, Service.spec).where(
            Service.type != "edge", or_(Service.owner.is_(None), Service.owner.not_in(alive))
        )
    ).all()
    won = []
    for name, owner, kind, spec in rows:
        if kind == "batch" and spec.get("device"):
            continue  # runs on a device, not on a control plane's machine
        condition = Service.owner.is_(None) if owner is None else Service.owner == owner
        values: dict[str, str] = {"owner": me, "owner_address": address}
        if kind == "online":
            # In the same write as the claim: no reader sees the new owner with the old state.
            values["state"] = "deploying"
            values["reason"] = f"taken over from replica {owner}" if owner else "claimed"
        result = session.execute(
            update(Service)
            .where(Service.name == name, condition)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount == 1:
            won.append((name, owner))
            logger.info("service %s claimed (previous owner: %s)", name, owner)
    session.expire_all()
    return won


def end_old_agents(session: Session, service: Service, previous: str | None) -> list[int]:
    """End the previous owner's agent processes of ``service`` if they run on this machine;
    returns the pids ended. A pid is ended only while its command line still names that
    service replica's agent config (never a reused pid of something else)."""
    if previous is None:
        return []
    row = session.get(Replica, previous)
    if row is not None and row.host != socket.gethostname():
        return []  # another machine: its agents went with it, or lost their credentials
    ended = []
    for replica in service.replicas:
        pid = replica.pid
        if pid and _is_agent_of(pid, service.name, replica.index):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            ended.append(pid)
    deadline = time.monotonic() + END_WAIT_S
    while time.monotonic() < deadline and any(_exists(pid) for pid in ended):
        time.sleep(0.05)
    return ended


def _is_agent_of(pid: int, service: str, index: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    config = f"/{service}/{index}/agent.yaml".encode()
    return b"edge_agent" in argv and any(arg.endswith(config) for arg in argv)


def _exists(pid: int) -> bool:
    """Whether ``pid`` still exists and is not a zombie (a reaped or dead child of ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
