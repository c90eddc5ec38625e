"""Crash-safe file writes: write a temporary sibling, fsync, rename, fsync the folder.

After a power cut or ``kill -9`` a reader sees either the old file or the new one, never a torn
mix. Every piece of agent state on disk goes through here. ``fsync_dir`` itself lives in
``model_packager.fsutil`` (package extraction needs it too) and is re-exported for the agent.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from model_packager.fsutil import fsync_dir

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "read_json", "replace_bytes"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (fsynced file and folder), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_and_rename(path, data, fsync=True)
    fsync_dir(path.parent)


def replace_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, without fsyncs, in an existing folder.

    For download chunks and delta pieces: each is checked against its digest whenever it is
    read back, so a file lost or torn by a power cut is found and fetched again. They need the
    rename (no reader ever sees half a write) but not the cost of two fsyncs per chunk.
    """
    _write_and_rename(path, data, fsync=False)


def _write_and_rename(path: Path, data: bytes, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
