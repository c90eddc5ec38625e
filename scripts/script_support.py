"""What the demo and benchmark scripts share: child processes, ports, polling, the REST client.

One home so that every script starts, waits for and stops its servers the same way: a child's
output always goes to a log file the script can point at, a server binds port 0 and says which
port it got in a port file, and a stop is always SIGTERM to our own child (by its pid) with a
SIGKILL only after a grace period.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

API = "/api/v1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a child that cannot bind port 0 itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy and return it; TimeoutError names it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


# --- child processes ----------------------------------------------------------------------------


def console_script(name: str) -> list[str]:
    """The command for one of the project's console scripts (``edge-agent``, ``control-plane``,
    ``model-packager``): the one installed next to this interpreter, so a child runs in the same
    environment as the script, else ``python -m <package>.cli`` when the venv has no entry point."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", f"{name.replace('-', '_')}.cli"]


def spawn_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stdout and stderr in the file ``log``.

    The file is what a failure message points the reader at, and a file (unlike a pipe nobody
    reads) never blocks a chatty server. The child holds its own copy of the descriptor, so ours
    is closed at once.
    """
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )


def wait_port_file(
    path: Path, proc: subprocess.Popen[Any], what: str, timeout: float, every: float = 0.05
) -> dict[str, Any]:
    """The port file a server child writes once it listens (it binds port 0, so only it knows).

    Fails at once with RuntimeError when the child exits first, instead of waiting the whole
    ``timeout`` for a file that will never come; TimeoutError (from ``wait_until``) otherwise.
    """

    def written() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        return path.exists()

    wait_until(f"{what} writing {path.name}", written, timeout, every)
    return dict(json.loads(path.read_text()))


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    """Stop one of our own children: SIGTERM (a graceful shutdown), SIGKILL after ``timeout``.

    Returns its exit status, or None when it had to be killed (or there was no process). Only
    the child itself is signalled, by its pid, never anything found by name.
    """
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a benchmark stopped by ``kill`` unwinds its
    clean-up (children stopped, work folder reported) as it does on Ctrl-C."""

    def interrupted(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


def verdict(ok: bool) -> str:
    """How a benchmark's report marks a target met or missed."""
    return "PASS" if ok else "FAIL"


def peak_rss_mb(usage: resource.struct_rusage | None = None) -> float:
    """Peak resident set size in MiB: of this process, or of the child ``usage`` (``os.wait4``)
    describes. ``ru_maxrss`` is in KiB on Linux, where the benchmarks run."""
    if usage is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def ort_cpu_session(model: Path | str, intra_op_threads: int, inter_op_threads: int) -> Any:
    """An onnxruntime CPU session with all graph optimisations and warnings off.

    The serving benchmark's floor server and its in-process reference both use this, so they run
    the model with the very same session settings and the comparison measures the serving stack.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


# --- the control plane --------------------------------------------------------------------------


def in_process_control_plane(settings: Any) -> tuple[Any, Any]:
    """A control plane app in this process with its database migrated: ``(app, ctx)``.

    The lifespan (which would start the fleet channel and its MQTT broker) is skipped and the
    context attached directly: datasets, training and the registry need none of it, and this keeps
    a benchmark's figures free of the broker. The caller closes ``ctx``.
    """
    from control_plane.app import create_app
    from control_plane.core.context import AppContext
    from control_plane.core.database import upgrade

    app = create_app(settings)
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    app.state.ctx = ctx
    return app, ctx


def request_json(client: Any, method: str, path: str, **kw: Any) -> Any:
    """``method`` on ``API + path`` through an httpx or TestClient ``client``: the JSON answer
    (None for an empty body), RuntimeError naming the call on an HTTP error status."""
    r = client.request(method, f"{API}{path}", **kw)
    if r.status_code >= 400:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
    return r.json() if r.content else None


def api_client(
    base_url: str | None, token: str | None, app: Any = None
) -> tuple[Any, Callable[..., Any]]:
    """An HTTP client for a control plane, and ``call(method, path, **kwargs) -> JSON``.

    Over HTTP (``base_url`` + ``token``), or in-process through FastAPI's TestClient (``app``), so
    the same demo step runs against a served control plane or inside a test.
    """
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if app is not None:
        from fastapi.testclient import TestClient

        client: Any = TestClient(app, headers=headers)
    else:
        if base_url is None:
            raise ValueError("give base_url (and token) or app")
        client = httpx.Client(base_url=base_url, headers=headers, timeout=120)
    return client, partial(request_json, client)


def run_in_work_folder(name: str, run: Callable[[Any, Path], dict[str, Any]], args: Any) -> int:
    """Run a fleet benchmark in a fresh work folder and always exit 0: a benchmark reports, it
    does not fail its caller. ``args`` needs ``json`` (a path or None) and ``keep``; the folder
    (agent and broker logs) is kept when the run fails, is interrupted or ``--keep`` asks."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        figures = run(args, work)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; logs in {work}", flush=True)
        return 0
    except Exception as exc:
        print(f"\n{name}: FAILED to complete: {type(exc).__name__}: {exc}", flush=True)
        print(f"logs kept in {work}", flush=True)
        return 0
    if args.keep:
        print(f"\nwork folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
