"""Where imported files come from: a server-side folder or a zip archive, behind one interface.

Format parsers see only relative POSIX names and ``read(name)``, so the same COCO, VOC, YOLO,
ImageFolder and manifest code serves folders and zips, and a zip is never extracted to disk.

Safety is checked before anything is read:

- folder: the folder must lie inside a configured import root; symlinks are not followed out of
  it; special files are skipped.
- zip: checked by ``core/archives.py``, the one safe zip reader every zip upload uses.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Protocol

from control_plane.core.archives import SafeZip as ZipSource
from control_plane.core.archives import check_relative
from control_plane.core.errors import InvalidRequest, PayloadTooLarge

__all__ = ["FolderSource", "Source", "ZipSource", "check_relative", "join"]

_READ = 1 << 16
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class Source(Protocol):
    """A tree of files addressed by relative POSIX names."""

    def names(self) -> list[str]:
        """Every regular file, sorted."""

    def read(self, name: str) -> bytes:
        """The file's bytes (``InvalidRequest`` naming it if missing or too large)."""

    def exists(self, name: str) -> bool: ...


def join(base: str, rel: str, what: str) -> str:
    """``rel`` resolved against folder ``base`` of a source, never escaping the source."""
    rel = check_relative(rel, what)
    return (PurePosixPath(base) / rel).as_posix() if base not in ("", ".") else rel


class FolderSource:
    def __init__(self, root: Path, max_file_bytes: int) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self._root = str(root)
        self._names: list[str] | None = None
        self._listed: frozenset[str] = frozenset()

    @classmethod
    def open(cls, folder: Path, allowed_roots: list[Path], max_file_bytes: int) -> FolderSource:
        if not allowed_roots:
            raise InvalidRequest(
                "server-side import is disabled (set CONTROL_PLANE_DATASET_IMPORT_ROOTS)"
            )
        real = Path(os.path.realpath(folder))
        if not any(real.is_relative_to(os.path.realpath(r)) for r in allowed_roots):
            raise InvalidRequest(f"folder {folder}: not inside an allowed import root")
        if not real.is_dir():
            raise InvalidRequest(f"folder {folder}: not a folder")
        return cls(real, max_file_bytes)

    def names(self) -> list[str]:
        if self._names is None:
            found: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.root):  # never follows links
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                for f in filenames:
                    if f.startswith("."):
                        continue
                    st = os.lstat(os.path.join(dirpath, f))
                    if stat.S_ISREG(st.st_mode):  # links and special files are skipped
                        found.append(f if rel_dir == "." else f"{rel_dir}/{f}")
            self._names = sorted(found)
            self._listed = frozenset(found)
        return self._names

    def exists(self, name: str) -> bool:
        path = self.root / name
        return path.is_file() and not path.is_symlink()

    def read(self, name: str) -> bytes:
        """One open, fstat and read per file (this runs for every imported file).

        A name the walk of ``names`` listed is known to be a safe relative path; any other name
        (from an annotation file) is checked first. ``O_NOFOLLOW`` refuses a symlink put in
        place since the walk, ``O_NONBLOCK`` keeps a FIFO from blocking the open, and the
        ``fstat`` of the opened file (not of the name) decides that it is regular and small
        enough, so there is no window between check and read.
        """
        rel = name
        if name not in self._listed:
            # A name from an annotation file must be one the walk found: the walk follows no
            # links, so a path through a symlinked folder inside the root is refused too.
            rel = check_relative(name, "file")
            self.names()
            if rel not in self._listed:
                if os.path.lexists(os.path.join(self._root, rel)):
                    raise InvalidRequest(f"{name}: not a regular file (links are not followed)")
                raise InvalidRequest(f"{name}: file not found")
        try:
            fd = os.open(os.path.join(self._root, rel), _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidRequest(f"{name}: file not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidRequest(f"{name}: not a regular file") from None
            raise InvalidRequest(f"{name}: cannot be read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidRequest(f"{name}: not a regular file")
            if st.st_size > self.max_file_bytes:
                raise PayloadTooLarge(f"{name}: {st.st_size} bytes, limit {self.max_file_bytes}")
            # Ask for one byte more than the size: a short read of a regular file is its end,
            # so a small file takes one read; one that grew since the fstat reads on up to
            # the limit (and is refused below).
            chunks: list[bytes] = []
            total = 0
            while total <= self.max_file_bytes:
                want = min(max(st.st_size + 1 - total, _READ), self.max_file_bytes + 1 - total)
                piece = os.read(fd, want)
                chunks.append(piece)
                total += len(piece)
                if len(piece) < want:
                    break
        except OSError as exc:
            raise InvalidRequest(f"{name}: cannot be read ({exc.strerror})") from None
        finally:
            os.close(fd)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > self.max_file_bytes:
            raise PayloadTooLarge(f"{name}: larger than the {self.max_file_bytes}-byte limit")
        return data
