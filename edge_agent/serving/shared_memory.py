"""The protocol's system shared-memory extension: named POSIX shared-memory regions.

A client on the same machine (a camera process beside the agent) creates a POSIX shared-memory
object (``shm_open``, e.g. with ``tritonclient.utils.shared_memory``), registers a window of it
under a name, and then references tensors by ``(region, offset, byte_size)`` instead of sending
their bytes: inputs are read from the region, requested outputs are written into it. That saves
the copies through gRPC or HTTP, which dominate a large input's latency (a 602 KB image).

Why the checks are what they are:

- Keys name objects under ``/dev/shm`` only (``/name``, no other ``/``), opened with
  ``O_NOFOLLOW`` and never created: a client can only name an object that exists, not a path.
- Each region maps only its own window (from the page below ``offset``), never the whole object.
- A client may shrink the object after registering it. Touching mapped pages past the end of
  the object would kill the agent with SIGBUS, so every read and write first checks the object's
  current size (one ``fstat``) and refuses the request if the window no longer fits. Inputs are
  copied out of the region before the model runs, so a client rewriting or shrinking the region
  during an inference cannot change or crash it.
- At most ``max_regions`` regions at once, and ``max_bytes`` mapped in total: registrations are
  a bounded resource like every queue of the agent.

The registry lives on the event loop (transports call it there), so it needs no lock.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import InvalidInput, RegionNotFound
from edge_agent.serving.tensor_bytes import decode_raw

#: Where Linux keeps POSIX shared-memory objects (``shm_open("/name")`` is ``/dev/shm/name``).
SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[A-Za-z0-9._-]{1,255}")
_NAME_MAX = 128
#: Why shared memory calls from another machine are refused.
REMOTE_REFUSED = (
    "system shared memory is only for clients on the agent's own machine (a loopback "
    "connection); send the tensor's bytes instead"
)
CUDA_UNSUPPORTED = (
    "CUDA shared memory is not supported: the agent runs models on the CPU; use system "
    "shared memory (/v2/systemsharedmemory, SystemSharedMemoryRegister)"
)


def require_local(local: bool) -> None:
    """Refuse shared memory to remote callers: a region names memory on the agent's machine,
    so a remote client could only use it to read or overwrite another local program's."""
    if not local:
        raise InvalidInput(REMOTE_REFUSED)


@dataclass(frozen=True, slots=True)
class ShmRef:
    """A tensor's place in a registered region: ``offset`` is relative to the region."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """One registered region, as the extension's status call reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """One registered window ``[offset, offset + byte_size)`` of a shared-memory object."""

    __slots__ = ("_end", "_mm", "_start", "byte_size", "key", "name", "offset")

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidInput(
                f"shared memory key {key!r}: no such object (create it with shm_open first)"
            ) from None
        except OSError as exc:
            raise InvalidInput(
                f"shared memory key {key!r} cannot be opened: {exc.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"shared memory key {key!r} is not a shared-memory object")
            if offset + byte_size > st.st_size:
                raise InvalidInput(
                    f"region {name!r}: offset {offset} + byte_size {byte_size} is past the end "
                    f"of {key!r} ({st.st_size} bytes)"
                )
            page = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._start = offset - page  # where the window starts inside the mapping
            self._end = self._start + byte_size
            self._mm = mmap.mmap(fd, self._end, offset=page)
        finally:
            os.close(fd)  # mmap holds its own descriptor

    def view(self, ref: ShmRef, what: str) -> memoryview:
        """The referenced bytes, after checking they lie in the region and the object still
        covers them (a shrunk object would SIGBUS on access)."""
        if ref.offset + ref.byte_size > self.byte_size:
            raise InvalidInput(
                f"{what}: offset {ref.offset} + byte_size {ref.byte_size} is past the end of "
                f"region {self.name!r} ({self.byte_size} bytes)"
            )
        if self._mm.size() < self.offset + self.byte_size:
            raise InvalidInput(
                f"{what}: the object behind region {self.name!r} ({self.key!r}) was shrunk "
                "below the registered window; unregister and register it again"
            )
        start = self._start + ref.offset
        return memoryview(self._mm)[start : start + ref.byte_size]

    def close(self) -> None:
        # A view still alive (BufferError): the mapping closes when it is collected.
        with contextlib.suppress(BufferError):
            self._mm.close()


class SharedMemoryRegistry:
    def __init__(self, max_regions: int = 64, max_bytes: int = 1 << 30) -> None:
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or len(name) > _NAME_MAX:
            raise InvalidInput(f"a region name is 1 to {_NAME_MAX} characters")
        if not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
            raise InvalidInput(
                f"shared memory key {key!r} must be a POSIX shared-memory name: '/name' with "
                "letters, digits, '.', '_' or '-'"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(f"region {name!r}: offset must be >= 0 and byte_size > 0")
        if self.max_regions == 0:
            raise InvalidInput(
                "system shared memory is turned off on this agent (shared_memory_max_regions: 0)"
            )
        if name in self._regions:
            raise InvalidInput(f"shared memory region {name!r} is already registered")
        if len(self._regions) >= self.max_regions:
            raise InvalidInput(
                f"{self.max_regions} shared memory regions are registered (the limit); "
                "unregister one first"
            )
        mapped = sum(r.byte_size for r in self._regions.values())
        if mapped + byte_size > self.max_bytes:
            raise InvalidInput(
                f"region {name!r} ({byte_size} bytes) would pass the {self.max_bytes} bytes "
                f"of shared memory the agent maps at most ({mapped} in use)"
            )
        self._regions[name] = _Region(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Forget one region, or every region when ``name`` is empty. An unknown name is not
        an error (as in Triton): the caller's goal, no such region, holds."""
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        if name:
            region = self._regions.get(name)
            if region is None:
                raise RegionNotFound(f"no shared memory region {name!r} is registered")
            regions = [region]
        else:
            regions = list(self._regions.values())
        return [RegionStatus(r.name, r.key, r.offset, r.byte_size) for r in regions]

    def _region(self, ref: ShmRef, what: str) -> _Region:
        region = self._regions.get(ref.region)
        if region is None:
            raise InvalidInput(f"{what}: no shared memory region {ref.region!r} is registered")
        return region

    def check(self, ref: ShmRef, what: str) -> None:
        """Fail early (before the model runs) on a reference that cannot be honoured."""
        self._region(ref, what).view(ref, what).release()

    def read(
        self, ref: ShmRef, name: str, datatype: str, shape: tuple[int, ...], count: int
    ) -> np.ndarray:
        """An input tensor from a region: byte length checked like raw contents, then copied."""
        what = f"input {name!r}"
        with self._region(ref, what).view(ref, what) as view:
            if datatype == "BYTES":
                return decode_raw(name, datatype, shape, count, bytes(view))
            arr = decode_raw(name, datatype, shape, count, view)  # type: ignore[arg-type]
            copied = arr.copy()
            del arr
            return copied

    def write(self, ref: ShmRef, name: str, data: bytes | memoryview) -> int:
        """An output tensor into a region; returns its byte size."""
        what = f"output {name!r}"
        if len(data) > ref.byte_size:
            raise InvalidInput(
                f"{what} needs {len(data)} bytes; its shared memory byte_size is {ref.byte_size}"
            )
        with self._region(ref, what).view(ref, what) as view:
            view[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return len(self._regions)

    def close(self) -> None:
        self.unregister()
