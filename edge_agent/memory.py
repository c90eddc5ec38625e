"""Hand the heap that start-up freed back to the operating system; keep large buffers reusable.

Loading the committed models allocates and frees a lot (manifests, digests of package files,
runtime sessions being built); glibc keeps freed pages in its arenas, so the process carries them
as resident memory for the rest of its life. ``malloc_trim(0)`` returns them: about 1.4 MB on the
MLP benchmark (scripts/bench-serving, "agent RSS, restarted into the MLP"), which is what keeps a
device with one small model under its 100 MB budget. Elsewhere (musl, macOS) there is no such
call and nothing happens.

The other half is how glibc serves large buffers while the agent works. With its defaults an
allocation above 128 KiB is a fresh ``mmap`` and a free heap top above 128 KiB is handed back
at once; both thresholds only grow once something that large has been freed. A fleet install
moves a package through exactly such buffers (256 KiB MQTT payloads and their copies, 1 MiB
reads while extracting, the runtime's copies of the weights), so at first nearly every one came
from pages the kernel had to fault in and zero: 53,000 minor faults for a 20 MiB package, about a
third of the agent's CPU for the whole install (``scripts/bench-rollout``). ``keep_large_buffers``
fixes the thresholds where glibc's own adjustment ends up anyway after a large model loads:
``mmap`` only above 32 MiB, and up to 8 MiB of free heap top kept for the next buffer; the
same install then takes 18,000 faults. ``release_free_heap`` after each install still hands
everything free back, so the resident size after an install does not change.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations this large or larger get their own ``mmap`` (glibc's ceiling for its dynamic
#: threshold on 64-bit systems, ``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 << 20
#: Free heap top kept instead of handed back at once (``release_free_heap`` hands it back).
TRIM_THRESHOLD = 8 << 20


def keep_large_buffers() -> bool:
    """Serve large buffers from the heap and keep a little of it free, so that the buffers of a
    download and an install reuse pages instead of faulting in new ones (see the module's
    docstring). False where the C library has no ``mallopt`` (not glibc): nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def release_free_heap() -> None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
