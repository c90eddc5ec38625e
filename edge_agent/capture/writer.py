"""The background writer: captures leave the serving path through a bounded queue.

``offer`` never waits: when ``queue_size`` captures are already waiting (the disk is slower than
the capture rate), the capture is skipped and counted (``skipped_queue_full``), so a request is
never held by its capture. One daemon thread builds each record (``record.build``: the ``.npy``,
the top-k) and writes it (``CaptureStore.put``: fsync and rename).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from edge_agent.capture.record import NotCapturable, Pending, build
from edge_agent.capture.store import CaptureStore
from protos import fleet_capture as fc

log = logging.getLogger(__name__)


class CaptureWriter:
    def __init__(self, store: CaptureStore, queue_size: int) -> None:
        self.store = store
        self._queue: queue.Queue[Pending | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self.skipped_queue_full = 0
        self.skipped_not_capturable = 0
        self.failed = 0
        self.duplicates = 0
        #: Called after each record is handled (tests and the benchmark wait on it).
        self.on_written: Callable[[], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def offer(self, item: Pending) -> bool:
        """Queue a capture; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.skipped_queue_full += 1
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop (waits at most ``timeout``)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("capture writer still busy at stop; queued captures are lost")
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                data, meta = build(item)
                if not self.store.put(data, meta):
                    self.duplicates += 1
                    if meta.shadow_version:  # held for another reason: add the shadow's answer
                        self.store.add_shadow(fc.digest_of(data), meta)
                self.store.save_if_due()
            except NotCapturable as exc:
                self.skipped_not_capturable += 1
                log.debug("capture of %s:%s skipped: %s", item.model, item.version, exc)
            except Exception:  # a capture must never take the writer down
                self.failed += 1
                log.exception("capture of %s:%s failed", item.model, item.version)
            if self.on_written is not None:
                self.on_written()
