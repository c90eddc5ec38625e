"""Run a converter's worker script on another virtual environment's python, as a subprocess.

Some frameworks cannot share a process with the main environment (MXNet 1.9.1 needs numpy < 1.24;
onnx2tf pins TensorFlow 2.19 and protobuf 4), so their side of a conversion is a script run by
path on its own venv's python. Both speak the same small protocol, kept here in one place: the
worker takes a command and its arguments on the command line and prints one JSON line on stdout,
``{"error": ...}`` when it failed. Any failure to start, a time-out, a non-zero exit or an error
answer becomes a :class:`ConversionError` for the given step, with the worker's reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_packager.convert.base import ConversionError

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_python(env_var: str, venv: str) -> Path:
    """``$env_var`` if set, else ``<repo>/<venv>/bin/python``."""
    env = os.environ.get(env_var)
    return Path(env) if env else REPO_ROOT / venv / "bin" / "python"


def call_worker(
    python: Path,
    worker: Path,
    step: str,
    label: str,
    args: tuple[str, ...],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python worker *args`` and return its JSON answer; ``label`` names it in errors."""
    try:
        proc = subprocess.run(
            [str(python), str(worker), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConversionError(step, f"{label} worker did not run: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or "error" in result or not result:
        why = result.get("error") or " ".join(proc.stderr.split()[-60:]) or "no output"
        raise ConversionError(step, f"{label}: {why}")
    return result
