"""Visualization jobs: TensorBoard servers over one or more jobs' event folders.

A server is a child process (``python -m tensorboard.main``) in its own process group, bound to
loopback with ``--port 0`` so the operating system picks a free port; the URL is read from the
line TensorBoard prints when it serves. Starting returns at once (state ``starting``); the
monitor thread fills in the URL (``running``) and stops servers that have been idle for their
``idle_s``.

Idle means: no API call about the server and no open TCP connection to its port (read from
``/proc/net/tcp*``, so a browser tab that keeps polling keeps it alive) for ``idle_s`` seconds.
Servers are not persisted: they die with the control plane (``stop_all`` at shutdown), and the
list starts empty after a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, Popen

from control_plane.core.errors import NotFound

logger = logging.getLogger(__name__)

_URL_RE = re.compile(r"(http://[^\s/]+:(\d+)/)")
_START_TIMEOUT_S = 120.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def open_connections(port: int) -> int:
    """Established TCP connections to local ``port`` (Linux ``/proc``; 0 elsewhere)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port and parts[3] == "01":  # 01 = ESTABLISHED
                count += 1
    return count


@dataclass
class Visualization:
    id: str
    job_ids: list[str]
    logdirs: dict[str, Path]
    idle_s: float
    proc: Popen[bytes]
    log: Path
    state: str = "starting"
    url: str | None = None
    port: int | None = None
    reason: str = ""
    started_at: dt.datetime = field(default_factory=_now)
    last_activity: float = field(default_factory=time.monotonic)
    started_mono: float = field(default_factory=time.monotonic)

    @property
    def last_activity_at(self) -> dt.datetime:
        return _now() - dt.timedelta(seconds=time.monotonic() - self.last_activity)


class VisualizationManager:
    def __init__(self, root: Path, default_idle_s: float, tick_s: float = 1.0) -> None:
        self.root = root
        self.default_idle_s = default_idle_s
        self.tick_s = tick_s
        self.lock = threading.Lock()
        self._items: dict[str, Visualization] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tensorboard-monitor", daemon=True)
        self._thread.start()

    def start(self, logdirs: dict[str, Path], idle_s: float | None = None) -> Visualization:
        """Start TensorBoard over ``{run name: event folder}``; returns while it starts."""
        vid = uuid.uuid4().hex[:12]
        folder = self.root / "visualizations"
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"{vid}.log"
        for path in logdirs.values():
            path.mkdir(parents=True, exist_ok=True)
        spec = ",".join(f"{name}:{path}" for name, path in sorted(logdirs.items()))
        argv = [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir_spec={spec}",
            "--host=127.0.0.1",
            "--port=0",
            "--reload_interval=5",
        ]
        with open(log, "wb") as out:
            proc = Popen(argv, stdin=DEVNULL, stdout=out, stderr=out, start_new_session=True)
        item = Visualization(
            id=vid,
            job_ids=sorted(logdirs),
            logdirs=logdirs,
            idle_s=idle_s or self.default_idle_s,
            proc=proc,
            log=log,
        )
        with self.lock:
            self._items[vid] = item
        logger.info("visualization %s: tensorboard pid %d over %s", vid, proc.pid, spec)
        return item

    def list(self) -> list[Visualization]:
        with self.lock:
            return sorted(self._items.values(), key=lambda v: v.started_at)

    def get(self, vid: str, touch: bool = True) -> Visualization:
        with self.lock:
            item = self._items.get(vid)
            if item is None:
                raise NotFound(f"visualization {vid} not found")
            if touch:
                item.last_activity = time.monotonic()
            self._refresh(item)
            return item

    def stop(self, vid: str, reason: str = "stopped by request") -> Visualization:
        with self.lock:
            item = self._items.get(vid)
            if item is None:
                raise NotFound(f"visualization {vid} not found")
            self._end(item, reason)
            return item

    def stop_all(self) -> None:
        self._stop.set()
        with self.lock:
            for item in self._items.values():
                self._end(item, "the control plane stopped")
        self._thread.join(timeout=5)

    # --- internals (under the lock) ----------------------------------------------------------

    def _refresh(self, item: Visualization) -> None:
        if item.state not in ("starting", "running"):
            return
        code = item.proc.poll()
        if code is not None:
            item.state = "failed"
            item.reason = f"tensorboard exited with status {code}: {self._tail(item)}"
            return
        if item.state == "starting":
            match = _URL_RE.search(self._tail(item, 4096))
            if match:
                item.url, item.port = match.group(1), int(match.group(2))
                item.state = "running"
                logger.info("visualization %s serving at %s", item.id, item.url)
            elif time.monotonic() - item.started_mono > _START_TIMEOUT_S:
                self._end(item, "tensorboard did not start in time", state="failed")

    @staticmethod
    def _tail(item: Visualization, limit: int = 1000) -> str:
        try:
            data = item.log.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()

    def _end(self, item: Visualization, reason: str, state: str = "stopped") -> None:
        if item.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(item.proc.pid, signal.SIGTERM)
            try:
                item.proc.wait(timeout=5)
            except Exception:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(item.proc.pid, signal.SIGKILL)
                item.proc.wait()
        if item.state in ("starting", "running"):
            item.state = state
            item.reason = reason
            logger.info("visualization %s %s: %s", item.id, state, reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self.lock:
                for item in list(self._items.values()):
                    try:
                        self._refresh(item)
                        if item.state == "running" and item.port and open_connections(item.port):
                            item.last_activity = time.monotonic()
                        idle = time.monotonic() - item.last_activity
                        if item.state in ("starting", "running") and idle > item.idle_s:
                            self._end(item, f"idle for {idle:.0f}s")
                    except Exception:
                        logger.exception("visualization %s monitor failed", item.id)
