"""What every worker process the control plane starts needs: where the code is, which Python runs
MXNet, the environment that makes ``control_plane`` importable, and the tail of a worker's log.

Training jobs and model conversions both run as child processes (a crash or a leak in TensorFlow
or MXNet never takes the API down); this module is what they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import control_plane

REPO_ROOT = Path(control_plane.__file__).resolve().parents[1]
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8192


def default_mxnet_python() -> Path:
    """The MXNet environment's Python (made by scripts/setup-mxnet), or ``EDGE_MXNET_PYTHON``."""
    env = os.environ.get("EDGE_MXNET_PYTHON")
    return Path(env) if env else REPO_ROOT / ".venv-mxnet" / "bin" / "python"


def worker_env(*first_paths: str, with_repo: bool = True) -> dict[str, str]:
    """This process's environment, with ``first_paths`` (and the repo, so ``control_plane``
    imports) in front of ``PYTHONPATH``; TensorFlow's C++ chatter off by default."""
    env = dict(os.environ)
    paths = list(first_paths)
    if with_repo:
        paths += [str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``lines`` lines of a log (at most ``limit`` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """Whether a process this control plane did not start itself (one adopted after a restart,
    so there is no ``Popen`` to poll) still runs: it exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
