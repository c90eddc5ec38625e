"""JupyterLab servers: started as children, watched, stopped when idle, found again after a
restart.

Each server runs ``python -m jupyterlab`` in its own process group, bound to 127.0.0.1 on a port
the operating system picks (``port=0``; read back from the ``jpserver-<pid>.json`` file Jupyter
writes in its runtime folder, so no other process can take it in between), with its own random
token and ``base_url = /notebooks/<id>/`` so that every URL
JupyterLab writes points through the control plane's proxy. Its configuration, runtime and
IPython folders live beside the work folder, so nothing from the machine's user setup leaks in.

The monitor thread, every ``tick_s``:

- a ``starting`` server whose port is known and that answers ``/api/status`` becomes
  ``running``; one that has not after ``start_timeout_s``, or whose process exited, becomes
  ``failed`` with its log tail;
- a ``running`` server is stopped (``stopped``, "idle for N s") when for ``idle_s`` there was no
  request through the proxy, no API call about it, no activity Jupyter itself recorded
  (``last_activity``) and no busy kernel: a long training cell keeps it alive.

Servers outlive the control plane: shutdown leaves them running, and the next start adopts every
``starting``/``running`` row whose process is still there (same pid, ``EDGE_NOTEBOOK_ID`` in its
environment); the others are marked ``stopped``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, Popen

import httpx

from control_plane.core.context import AppContext
from control_plane.core.workers import pid_alive
from control_plane.notebooks.models import Notebook

logger = logging.getLogger(__name__)

ENV_MARK = "EDGE_NOTEBOOK_ID"
_REPO = Path(__file__).resolve().parents[2]
# The training helper (edge_training) and the SDK, importable from the kernel.
_TRAINING_SDK = _REPO / "control_plane" / "training" / "sdk"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def process_is_notebook(pid: int, notebook_id: str) -> bool:
    """True when ``pid`` lives and carries ``EDGE_NOTEBOOK_ID=<id>`` (not a recycled pid)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False
    return f"{ENV_MARK}={notebook_id}".encode() in env.split(b"\0")


@dataclass
class Folders:
    root: Path

    def home(self, notebook_id: str) -> Path:
        return self.root / notebook_id

    def work(self, notebook_id: str) -> Path:
        return self.home(notebook_id) / "work"

    def dataset(self, notebook_id: str) -> Path:
        return self.home(notebook_id) / "dataset"

    def log(self, notebook_id: str) -> Path:
        return self.home(notebook_id) / "jupyter.log"

    def runtime(self, notebook_id: str) -> Path:
        return self.home(notebook_id) / ".jupyter" / "runtime"

    def bound_port(self, notebook_id: str, pid: int) -> int:
        """The port the server ``pid`` listens on, from its runtime file; 0 while unknown."""
        try:
            info = json.loads((self.runtime(notebook_id) / f"jpserver-{pid}.json").read_text())
            return int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0


@dataclass
class Live:
    """What the monitor knows of a server it started or adopted."""

    pid: int
    port: int  # 0 until the server has written its runtime file
    token: str
    idle_s: float
    proc: Popen[bytes] | None = None  # None when adopted after a restart
    last_activity: float = field(default_factory=time.monotonic)
    started_mono: float = field(default_factory=time.monotonic)
    stopping: bool = False


class JupyterServers:
    def __init__(
        self,
        ctx: AppContext,
        tick_s: float = 2.0,
        on_final: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.folders = Folders(ctx.settings.resolved_notebooks_dir)
        self.start_timeout_s = ctx.settings.notebooks.start_timeout_s
        self.tick_s = tick_s
        self.lock = threading.Lock()
        self._live: dict[str, Live] = {}
        self._on_final = on_final
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=5.0)
        self._adopt()
        self._thread = threading.Thread(target=self._loop, name="notebook-monitor", daemon=True)
        self._thread.start()

    # --- commands ----------------------------------------------------------------------------

    def launch(self, nb: Notebook, data_url: Path | None) -> None:
        """Start the server of ``nb`` (a row in the caller's session: pid, port, state set)."""
        work = self.folders.work(nb.id)
        home = self.folders.home(nb.id)
        work.mkdir(parents=True, exist_ok=True)
        base = f"/notebooks/{nb.id}/"
        argv = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            f"--ServerApp.base_url={base}",
            f"--ServerApp.root_dir={work}",
            f"--IdentityProvider.token={nb.token}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        env = dict(os.environ)
        env.update(
            {
                ENV_MARK: nb.id,
                "JUPYTER_CONFIG_DIR": str(home / ".jupyter" / "config"),
                "JUPYTER_RUNTIME_DIR": str(self.folders.runtime(nb.id)),
                "IPYTHONDIR": str(home / ".ipython"),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(_TRAINING_SDK), str(_REPO), env.get("PYTHONPATH", "")) if p
                ),
                "TRAIN_URL": str(work / "output"),
                "EDGE_INFERENCE_URL": nb.api_url,
                "EDGE_INFERENCE_TOKEN": self.ctx.settings.api_token.get_secret_value(),
            }
        )
        if data_url is not None:
            env["DATA_URL"] = str(data_url)
        else:
            env.pop("DATA_URL", None)
        with open(self.folders.log(nb.id), "ab") as out:
            proc = Popen(
                argv, cwd=work, env=env, stdin=DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        nb.pid, nb.port, nb.state, nb.reason = proc.pid, None, "starting", ""
        nb.started_at = nb.updated_at = _now()
        with self.lock:
            self._live[nb.id] = Live(proc.pid, 0, nb.token, nb.idle_s, proc)
        logger.info("notebook %s: jupyterlab pid %d starting", nb.id, proc.pid)

    def stop(self, notebook_id: str) -> None:
        """End the server's process group (SIGTERM, 5 s, SIGKILL); the caller updates the row."""
        with self.lock:
            live = self._live.pop(notebook_id, None)
        if live is not None:
            live.stopping = True
            self._kill(live)

    def touch(self, notebook_id: str) -> None:
        with self.lock:
            live = self._live.get(notebook_id)
            if live is not None:
                live.last_activity = time.monotonic()

    def address(self, notebook_id: str) -> tuple[int, str] | None:
        """``(port, jupyter token)`` of a server that runs, for the proxy."""
        with self.lock:
            live = self._live.get(notebook_id)
            return None if live is None or not live.port else (live.port, live.token)

    def close(self) -> None:
        """Stop watching; the servers keep running and are adopted by the next start."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._http.close()

    # --- internals ---------------------------------------------------------------------------

    def _kill(self, live: Live) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(live.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._alive(live):
            time.sleep(0.05)
        if self._alive(live):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(live.pid, signal.SIGKILL)
            if live.proc is not None:
                live.proc.wait()

    @staticmethod
    def _alive(live: Live) -> bool:
        if live.proc is not None:
            return live.proc.poll() is None
        return pid_alive(live.pid)

    def _adopt(self) -> None:
        with self.ctx.sessions() as session:
            rows = session.query(Notebook).filter(Notebook.state.in_(("starting", "running")))
            for nb in rows:
                if nb.pid and process_is_notebook(nb.pid, nb.id):
                    self._live[nb.id] = Live(nb.pid, nb.port or 0, nb.token, nb.idle_s)
                    logger.info("notebook %s: adopted jupyterlab pid %d", nb.id, nb.pid)
                else:
                    nb.state, nb.reason = "stopped", "not running after a control-plane restart"
                    nb.pid = nb.port = None
                    nb.updated_at = _now()
            session.commit()

    def _status(self, live: Live, notebook_id: str) -> tuple[bool, float | None, bool]:
        """``(answers, seconds since Jupyter's last activity, a kernel is busy)``."""
        base = f"http://127.0.0.1:{live.port}/notebooks/{notebook_id}/api"
        headers = {"Authorization": f"token {live.token}"}
        try:
            # no_track_activity: these polls must not count as the user's activity.
            quiet = {"no_track_activity": "1"}
            status = self._http.get(f"{base}/status", headers=headers, params=quiet)
            if status.status_code != 200:
                return False, None, False
            kernels = self._http.get(f"{base}/kernels", headers=headers, params=quiet).json()
        except (httpx.HTTPError, ValueError):
            return False, None, False
        busy = any(k.get("execution_state") == "busy" for k in kernels)
        since = None
        with contextlib.suppress(KeyError, ValueError, TypeError):
            last = dt.datetime.fromisoformat(status.json()["last_activity"].replace("Z", "+00:00"))
            since = (_now() - last).total_seconds()
        return True, since, busy

    def _tail(self, notebook_id: str, limit: int = 800) -> str:
        try:
            data = self.folders.log(notebook_id).read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()

    def _finish(self, notebook_id: str, state: str, reason: str) -> None:
        with self.lock:
            live = self._live.pop(notebook_id, None)
        if live is not None:
            self._kill(live)
        with self.ctx.sessions() as session:
            nb = session.get(Notebook, notebook_id)
            if nb is not None and nb.state in ("starting", "running"):
                nb.state, nb.reason, nb.pid, nb.port = state, reason, None, None
                nb.updated_at = _now()
                session.commit()
        logger.info("notebook %s %s: %s", notebook_id, state, reason)
        if self._on_final is not None:
            self._on_final(notebook_id)

    def check(self, notebook_id: str) -> None:
        """One monitor pass over one server: the loop's body, also run by a GET of a starting
        notebook so that it reads `running` as soon as JupyterLab answers."""
        with self.lock:
            live = self._live.get(notebook_id)
        if live is None or live.stopping:
            return
        if not self._alive(live):
            code = live.proc.returncode if live.proc is not None else None
            self._finish(
                notebook_id,
                "failed",
                f"jupyterlab exited (status {code}): {self._tail(notebook_id)}",
            )
            return
        if not live.port:
            live.port = self.folders.bound_port(notebook_id, live.pid)
        answers, since, busy = (
            self._status(live, notebook_id) if live.port else (False, None, False)
        )
        with self.ctx.sessions() as session:
            nb = session.get(Notebook, notebook_id)
            if nb is None:
                return
            if live.port and nb.port != live.port:
                nb.port = live.port
                session.commit()
            if nb.state == "starting":
                if answers:
                    nb.state, nb.updated_at = "running", _now()
                    session.commit()
                    live.last_activity = time.monotonic()
                elif time.monotonic() - live.started_mono > self.start_timeout_s:
                    session.close()
                    self._finish(notebook_id, "failed", "jupyterlab did not answer in time")
                return
        if busy:
            live.last_activity = time.monotonic()
        idle = time.monotonic() - live.last_activity
        if since is not None:
            idle = min(idle, since)
        if answers and idle > live.idle_s:
            self._finish(notebook_id, "stopped", f"idle for {idle:.0f}s")

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self.lock:
                ids = list(self._live)
            for notebook_id in ids:
                try:
                    self.check(notebook_id)
                except Exception:
                    logger.exception("notebook %s: monitor pass failed", notebook_id)
