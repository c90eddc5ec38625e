"""Content-addressed blob storage for package files.

``BlobStore`` is the one interface the services use, so an S3-compatible store can replace the
local folder without touching them. Blobs are immutable and named by their sha256; ``put`` takes a
finished local file (uploads are verified locally before they are stored).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore(Protocol):
    def put(self, digest: str, source: Path) -> None:
        """Store ``source`` (a verified local file) under ``digest``; consumes the file."""

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes starting at ``offset``."""

    def delete(self, digest: str) -> None: ...


class LocalBlobStore:
    """Blobs as ``<root>/<aa>/<digest>`` files; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, digest: str, source: Path) -> None:
        target = self._path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            Path(source).unlink(missing_ok=True)
            return
        try:
            os.replace(source, target)
        except OSError:  # another filesystem: copy then rename
            tmp = target.with_suffix(".partial")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            Path(source).unlink(missing_ok=True)
        logger.info("stored blob %s", digest)

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int:
        return self._path(digest).stat().st_size

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        with open(self._path(digest), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        """Every stored digest (used by tests and maintenance)."""
        return sorted(p.name for p in self.root.glob("*/*") if _DIGEST_RE.match(p.name))
