"""Hand the heap that start-up freed back to the operating system.

Loading the committed models allocates and frees a lot (manifests, digests of package files,
runtime sessions being built); glibc keeps freed pages in its arenas, so the process carries them
as resident memory for the rest of its life. ``malloc_trim(0)`` returns them: about 1.4 MB on the
MLP benchmark (scripts/bench-serving, "agent RSS, restarted into the MLP"), which is what keeps a
device with one small model under its 100 MB budget. Elsewhere (musl, macOS) there is no such
call and nothing happens.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)


def release_free_heap() -> None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
