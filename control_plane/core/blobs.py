"""Content-addressed blob storage for package files.

``BlobStore`` is the one interface the services use: ``LocalBlobStore`` (a folder, the default)
or ``S3BlobStore`` (an S3-compatible store, when ``storage.url`` is ``s3://bucket/prefix``);
``make_blob_store`` picks one from the settings. Blobs are immutable and named by their sha256;
``put`` takes a finished local file (uploads are verified locally before they are stored).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from control_plane.core.s3 import S3Objects
    from control_plane.core.settings import Settings

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


class S3BlobStore:
    """Blobs as ``<prefix>blobs/<aa>/<digest>`` objects; see ``control_plane.core.s3``.

    ``put`` uploads multipart above the configured threshold; an object is written whole or not
    at all, so a reader never sees part of a blob. ``read_range`` serves package chunks (each
    checked by the caller against the package's chunk digests); ``stream`` reads a whole blob
    and checks it against its name.
    """

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    @staticmethod
    def _name(digest: str) -> str:
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return f"blobs/{digest[:2]}/{digest}"

    def put(self, digest: str, source: Path) -> None:
        name = self._name(digest)
        try:
            if not self.objects.exists(name):
                self.objects.put_file(name, Path(source), sha256=digest)
                logger.info("stored blob %s in %s", digest, self.objects.location.url())
        finally:
            Path(source).unlink(missing_ok=True)

    def exists(self, digest: str) -> bool:
        return self.objects.exists(self._name(digest))

    def size(self, digest: str) -> int:
        return self.objects.size(self._name(digest))

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        return self.objects.read_range(self._name(digest), offset, length)

    def stream(self, digest: str) -> Iterator[bytes]:
        return self.objects.stream(self._name(digest), sha256=digest)

    def delete(self, digest: str) -> None:
        self.objects.delete(self._name(digest))

    def digests(self) -> list[str]:
        """Every stored digest (used by tests and maintenance)."""
        names = self.objects.names("blobs/")
        return sorted(n.rsplit("/", 1)[-1] for n in names if _DIGEST_RE.match(n.rsplit("/", 1)[-1]))


def make_blob_store(settings: Settings, objects: S3Objects | None = None) -> BlobStore:
    """The blob store the settings name: S3 for ``storage.url = s3://...``, else a folder.
    ``objects`` reuses an S3 client already made from the same settings."""
    if objects is None:
        objects = object_store(settings)
    if objects is None:
        return LocalBlobStore(settings.resolved_blob_dir)
    return S3BlobStore(objects)


def object_store(settings: Settings) -> S3Objects | None:
    """The S3 objects of ``storage.url`` (bucket checked), or None when blobs live on disk."""
    url = settings.storage.url
    if not url:
        return None
    from control_plane.core.s3 import S3Location, S3Objects

    objects = S3Objects(S3Location.parse(url), settings.storage.s3_options())
    objects.check()
    return objects
