"""The shared part of the fleet's device channels (batch jobs, captures): a bounded queue and
one worker thread between the MQTT network thread and the channel's handler.

The fleet service calls ``handle`` from its network thread, which must never wait on a database
or a file, so a message is only queued; beyond ``queue_size`` it is dropped and counted, and the
device sends again after its timeout. The worker decodes and dispatches (``_one``, per channel):
a message that does not decode is logged and skipped, and no error stops the worker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from protos import fleet_topics as topics

if TYPE_CHECKING:
    from control_plane.fleet.service import FleetService

logger = logging.getLogger(__name__)

H = TypeVar("H")


class QueuedChannel(Generic[H]):
    """Subclasses set ``queue_size``, ``thread_name``, ``what`` (for log lines) and ``_one``."""

    queue_size = 256
    thread_name = "fleet-channel"
    what = "channel"

    def __init__(self, fleet: FleetService) -> None:
        self.fleet = fleet
        self.handler: H | None = None
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(self.queue_size)
        self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
        self._thread.start()

    def handle(self, device_id: str, leaf: str, payload: bytes) -> None:
        """From the network thread: queue the message, or drop and count it when full."""
        try:
            self._queue.put_nowait((device_id, leaf, payload))
        except queue.Full:
            self.dropped += 1
            logger.warning("%s: %s queue full; %s message dropped", device_id, self.what, leaf)

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):  # a full queue: the daemon thread dies with us
            self._queue.put_nowait(None)
        self._thread.join(timeout=5)

    def _topic(self, device_id: str, leaf: str) -> str:
        return topics.device_topic(device_id, leaf, self.fleet.root)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            device_id, leaf, payload = item
            if self.handler is None:
                continue
            try:
                self._one(self.handler, device_id, leaf, payload)
            except ValueError as exc:
                logger.warning("bad %s message from %s: %s", leaf, device_id, exc)
            except Exception:
                logger.exception("handling %s from %s failed", leaf, device_id)

    def _one(self, handler: H, device_id: str, leaf: str, payload: bytes) -> None:
        raise NotImplementedError
