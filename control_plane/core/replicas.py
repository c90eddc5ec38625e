"""Control-plane replicas: which processes share the database, and which of them are alive.

Several ``control-plane serve`` processes may run on one database, one object store and one
broker (``replica_id``). Each records a heartbeat row every ``replica_heartbeat_s``; a replica
whose heartbeat is older than ``replica_lease_s`` is taken as dead, and the survivors take over
what it left behind (its running training jobs are marked failed: their processes died with
it or are unreachable). A replica that stops cleanly deletes its row at once.

Work is never handed out by this module: training jobs are claimed row by row
(``training.runner.claim_queued_jobs``), and fleet messages are shared by the broker (MQTT
shared subscriptions), so no leader is needed and no replica waits for an election.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading

from sqlalchemy import Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from control_plane.core.database import Base, utcnow

logger = logging.getLogger(__name__)


class Replica(Base):
    __tablename__ = "control_plane_replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def beat(session: Session, replica_id: str) -> None:
    """Record that ``replica_id`` is alive now (insert on first beat)."""
    row = session.get(Replica, replica_id)
    if row is None:
        session.add(Replica(id=replica_id, host=socket.gethostname(), pid=os.getpid()))
    else:
        row.heartbeat_at = utcnow()
        row.pid = os.getpid()
    session.commit()


def live_replicas(session: Session, lease_s: float) -> set[str]:
    """Ids of the replicas whose heartbeat is within the lease."""
    since = utcnow() - dt.timedelta(seconds=lease_s)
    return set(session.scalars(select(Replica.id).where(Replica.heartbeat_at >= since)).all())


class Heartbeat:
    """The thread that keeps this replica's row fresh; ``stop`` removes the row."""

    def __init__(self, sessions: sessionmaker[Session], replica_id: str, interval_s: float) -> None:
        self.sessions = sessions
        self.replica_id = replica_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="replica-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        with self.sessions() as session:
            beat(session, self.replica_id)
        self._thread.start()
        logger.info("replica %s started", self.replica_id)
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.sessions() as session:
                    beat(session, self.replica_id)
            except Exception:  # the database may be away for a moment: beat again next time
                logger.exception("replica %s heartbeat failed", self.replica_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self.sessions() as session:
                session.execute(delete(Replica).where(Replica.id == self.replica_id))
                session.commit()
        except Exception:
            logger.exception("replica %s could not remove its heartbeat", self.replica_id)
