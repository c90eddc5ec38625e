"""Coalesced rewrites of the broker's password and ACL files.

Every registration or deletion changes the registry, and the broker's ``passwd``/``acl`` are
written whole from it (``broker_config.sync_registry_files``) and reread whole by the broker.
Doing that inside every registration call made registering N devices cost N rewrites of files
that grow with N: quadratic, 16 ms a rewrite at 1,000 devices, plus a reload of 1,000 entries by
the broker each time. Here the call only marks the files stale; one thread rewrites them at most
once per ``settle_s`` (0.2 s), so a burst of registrations costs one rewrite and one reload per
burst, and registering N devices costs time linear in N.

What that changes for a caller: a new device's credentials work, and a deleted device's stop
working, up to ``settle_s`` plus one rewrite later than before. Neither was immediate before
either (the broker rereads its files asynchronously after its reload signal), and clients
already retry their first connection. ``flush`` waits for the files to catch up (shutdown uses
it, so a change never stays unwritten).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Least time between two rewrites: the burst a rewrite gathers.
SETTLE_S = 0.2


class BrokerFilesSync:
    """One background thread running ``sync`` after changes, never more than once per settle."""

    def __init__(self, sync: Callable[[], None], settle_s: float = SETTLE_S) -> None:
        self._sync = sync
        self._settle_s = settle_s
        self._cond = threading.Condition()
        self._requested = 0  # changes asked for
        self._synced = 0  # changes the files include
        self._stopping = False
        # One write at a time, each reading the registry inside it: the last write to finish
        # always saw the latest state (two overlapping writes could otherwise end stale-last).
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="broker-files", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """The registry changed: rewrite the files soon (returns at once)."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()

    def sync_pending(self) -> None:
        """Write pending changes now, in the caller's thread (at start-up, before ``start``:
        the broker should find the files current when the control plane first connects)."""
        with self._cond:
            target = self._requested
            if target == self._synced:
                return
        with self._write_lock:
            self._sync()
        with self._cond:
            self._synced = max(self._synced, target)
            self._cond.notify_all()

    def sync_now(self) -> None:
        """Write every change made so far now, in the caller's thread: for a caller that must
        know the files are current when it returns (package grants before desired states)."""
        self.request()
        self.sync_pending()

    def flush(self, timeout: float) -> bool:
        """Wait until every change requested so far is written; False on timeout."""
        with self._cond:
            target = self._requested
            return self._cond.wait_for(lambda: self._synced >= target, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is pending, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested > self._synced or self._stopping)
                if self._requested == self._synced:
                    return  # stopping, nothing pending
                if not self._stopping:
                    # Gather the rest of the burst; a stop cuts the wait short.
                    self._cond.wait_for(lambda: self._stopping, self._settle_s)
                target = self._requested
            try:
                with self._write_lock:
                    self._sync()
            except Exception:
                logger.exception("rewriting the broker's password and ACL files failed")
            with self._cond:
                self._synced = max(self._synced, target)
                self._cond.notify_all()
