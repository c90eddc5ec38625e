"""``fsync_dir``: make a rename (or a new file) in a folder survive a power cut.

A rename is atomic for other processes at once, but it is durable only once the folder's own
entry is flushed. This is the one copy for the repository: package extraction here and the
agent's state files (``edge_agent.fsutil``) need it, and model_packager is the lowest layer both
import.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush the folder's entries (names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
