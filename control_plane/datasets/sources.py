"""Where imported files come from: a server-side folder or a zip archive, behind one interface.

Format parsers see only relative POSIX names and ``read(name)``, so the same COCO, VOC, YOLO,
ImageFolder and manifest code serves folders and zips, and a zip is never extracted to disk.

Safety is checked before anything is read:

- folder: the folder must lie inside a configured import root; symlinks are not followed out of
  it; special files are skipped.
- zip: every member name is checked (no absolute paths, drive letters, backslashes, ``..``), no
  symlinks or other non-regular members, member count and declared sizes under the limits; then
  each read stops as soon as the actual bytes exceed the declared size or the limit (a forged
  header cannot smuggle a zip bomb past the declared-size check).
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from control_plane.core.errors import InvalidRequest, PayloadTooLarge

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


def check_relative(name: str, what: str = "member") -> str:
    """``name`` as a safe relative POSIX path, or ``InvalidRequest`` naming it."""
    if not name or "\x00" in name:
        raise InvalidRequest(f"{what} {name!r}: empty or NUL in name")
    if "\\" in name:
        raise InvalidRequest(f"{what} {name!r}: backslash in path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"{what} {name!r}: absolute path")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise InvalidRequest(f"{what} {name!r}: '..' in path")
    return PurePosixPath(*[p for p in parts if p != "."]).as_posix()


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


class ZipSource:
    def __init__(
        self,
        stream: BinaryIO | Path,
        *,
        max_members: int,
        max_total_bytes: int,
        max_file_bytes: int,
        what: str = "archive",
    ) -> None:
        try:
            self.zf = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InvalidRequest(f"{what}: not a valid zip archive ({exc})") from None
        self.max_file_bytes = max_file_bytes
        infos = self.zf.infolist()
        if len(infos) > max_members:
            raise PayloadTooLarge(f"{what}: {len(infos)} members, limit {max_members}")
        self._infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = check_relative(info.filename.rstrip("/") or info.filename, "member")
            mode = (info.external_attr >> 16) & 0xFFFF
            if info.is_dir():
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no type recorded (writestr)
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise InvalidRequest(f"member {info.filename!r}: {kind} not allowed")
            if info.flag_bits & 0x1:
                raise InvalidRequest(f"member {info.filename!r}: encrypted")
            if info.file_size > max_file_bytes:
                raise PayloadTooLarge(
                    f"member {info.filename!r}: {info.file_size} bytes, limit {max_file_bytes}"
                )
            total += info.file_size
            if total > max_total_bytes:
                raise PayloadTooLarge(
                    f"{what}: uncompressed size exceeds the {max_total_bytes}-byte limit"
                )
            if name in self._infos:
                raise InvalidRequest(f"member {info.filename!r}: appears twice")
            base = PurePosixPath(name).name
            if base.startswith(".") or name.startswith("__MACOSX/"):
                continue
            self._infos[name] = info
        self._names = sorted(self._infos)
        self._budget = max_total_bytes

    def names(self) -> list[str]:
        return self._names

    def exists(self, name: str) -> bool:
        return name in self._infos

    def read(self, name: str) -> bytes:
        info = self._infos.get(name)
        if info is None:
            raise InvalidRequest(f"{name}: not in the archive")
        limit = min(info.file_size, self.max_file_bytes)
        out = bytearray()
        try:
            with self.zf.open(info) as f:
                while piece := f.read(_READ):
                    out += piece
                    if len(out) > limit:
                        raise PayloadTooLarge(
                            f"member {name!r}: inflates beyond its declared size {info.file_size}"
                        )
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise InvalidRequest(f"member {name!r}: corrupt ({exc})") from None
        self._budget -= len(out)
        if self._budget < 0:
            raise PayloadTooLarge("archive: uncompressed size exceeds the limit")
        return bytes(out)

    def close(self) -> None:
        self.zf.close()
