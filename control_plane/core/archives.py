"""Uploaded zip archives, read and extracted one safe way for every kind of upload.

Dataset archives, training code and model directories all arrive as zips. Each is checked before
anything is read or written:

- every member name is a safe relative POSIX path (no absolute paths, drive letters,
  backslashes, NUL or ``..``); a name that is both a file and a folder (``model`` and
  ``model/x``) or that appears twice is refused;
- only regular files and folders: symlinks, devices and encrypted members are refused;
- the member count, each member's declared size and the declared total are under the kind's
  limits (``ArchiveLimits``);
- while inflating, every member is held to its declared size and the archive to its total limit,
  and a member whose bytes do not match its header (size or CRC) is refused as malformed: a forged
  small size cannot smuggle a zip bomb past the declared-size checks.

Every refusal is a whole-archive refusal, whichever endpoint received the zip: ``InvalidArchive``
(422) for what is malformed, ``ArchiveTooLarge`` (413) for what is over a limit, and nothing is
kept. Both derive from ``ArchiveRefused``, so a caller that reports problems per item (a dataset
import) can tell them from a problem of one sample and let them refuse the request. Dot files and
``__MACOSX/`` entries are skipped, not refused.

Members are inflated in chunks: ``read`` holds one member in memory (dataset samples, bounded by
the per-file limit), ``extract_zip`` streams each member to disk, so a large model weight file
costs no more memory than a small one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from control_plane.core.errors import ArchiveTooLarge, InvalidArchive, InvalidRequest

_READ = 1 << 16


@dataclass(frozen=True)
class ArchiveLimits:
    """How large one kind of uploaded archive may be, inflated."""

    max_members: int
    max_total_bytes: int
    max_file_bytes: int


def check_relative(name: str, what: str = "member") -> str:
    """``name`` as a safe relative POSIX path, or ``InvalidRequest`` naming it.

    Used for archive members and for paths named inside uploads (annotation files, boot files):
    the result can be joined to a folder without leaving it.
    """
    if not name or "\x00" in name:
        raise InvalidRequest(f"{what} {name!r}: empty or NUL in name")
    if "\\" in name:
        raise InvalidRequest(f"{what} {name!r}: backslash in path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"{what} {name!r}: absolute path")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise InvalidRequest(f"{what} {name!r}: '..' in path")
    kept = [p for p in parts if p != "."]
    if not kept:
        raise InvalidRequest(f"{what} {name!r}: names no file")
    return PurePosixPath(*kept).as_posix()


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's checked name; an unsafe one refuses the archive (``InvalidArchive``).

    A ``./`` folder entry (some zip tools write one for the root) names the root itself and is
    harmless, so it is ``"."`` rather than a refusal.
    """
    raw = info.filename.rstrip("/") or info.filename
    if info.is_dir() and not PurePosixPath(raw).parts:
        return "."
    try:
        return check_relative(raw, "member")
    except InvalidRequest as exc:
        raise InvalidArchive(str(exc)) from None


class SafeZip:
    """A zip checked whole on opening; its regular files read by name within the limits."""

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
            raise InvalidArchive(f"{what}: not a valid zip archive ({exc})") from None
        try:
            self._check(what, max_members, max_total_bytes, max_file_bytes)
        except BaseException:
            self.zf.close()
            raise
        self.what = what
        self.max_file_bytes = max_file_bytes
        self._budget = max_total_bytes

    def _check(
        self, what: str, max_members: int, max_total_bytes: int, max_file_bytes: int
    ) -> None:
        infos = self.zf.infolist()
        if len(infos) > max_members:
            raise ArchiveTooLarge(f"{what}: {len(infos)} members, limit {max_members}")
        self._infos: dict[str, zipfile.ZipInfo] = {}
        folders: set[str] = set()
        files: set[str] = set()
        total = 0
        for info in infos:
            name = _member_name(info)
            if info.is_dir():
                folders.add(name)
                continue
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no type recorded (writestr)
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise InvalidArchive(f"member {info.filename!r}: {kind} not allowed")
            if info.flag_bits & 0x1:
                raise InvalidArchive(f"member {info.filename!r}: encrypted")
            if info.file_size > max_file_bytes:
                raise ArchiveTooLarge(
                    f"member {info.filename!r}: {info.file_size} bytes, limit {max_file_bytes}"
                )
            total += info.file_size
            if total > max_total_bytes:
                raise ArchiveTooLarge(
                    f"{what}: uncompressed size exceeds the {max_total_bytes}-byte limit"
                )
            if name in files:
                raise InvalidArchive(f"member {info.filename!r}: appears twice")
            files.add(name)
            folders.update(str(parent) for parent in PurePosixPath(name).parents)
            base = PurePosixPath(name).name
            if base.startswith(".") or name.startswith("__MACOSX/"):
                continue
            self._infos[name] = info
        # Skipped dot files count too: extracting ``a`` next to ``a/.keep`` would still clash.
        clash = sorted(folders & files)
        if clash:
            raise InvalidArchive(f"member {clash[0]!r}: both a file and a folder")
        self._names = sorted(self._infos)

    def names(self) -> list[str]:
        """The regular files that will be read (dot files and ``__MACOSX/`` left out), sorted."""
        return self._names

    def exists(self, name: str) -> bool:
        return name in self._infos

    def _inflate(self, name: str) -> Iterator[bytes]:
        """The member's bytes in chunks, held to its declared size and the archive's budget.

        A name that is not in the archive is the caller's problem (``InvalidRequest``: an
        annotation naming a missing file concerns that item); everything else refuses the archive.
        """
        info = self._infos.get(name)
        if info is None:
            raise InvalidRequest(f"{name}: not in the archive")
        limit = min(info.file_size, self.max_file_bytes)
        size = 0
        try:
            with self.zf.open(info) as f:
                while piece := f.read(_READ):
                    size += len(piece)
                    self._budget -= len(piece)
                    if size > limit:  # a header that lies is malformed, as a CRC mismatch is
                        raise InvalidArchive(
                            f"member {name!r}: inflates beyond its declared size {info.file_size}"
                        )
                    if self._budget < 0:
                        raise ArchiveTooLarge(
                            f"{self.what}: uncompressed size exceeds the limit while inflating"
                        )
                    yield piece
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            # zipfile stops at the declared size, so a forged small size shows up here as a
            # CRC mismatch; an unsupported compression method is refused the same way.
            raise InvalidArchive(f"member {name!r}: corrupt or forged ({exc})") from None

    def read(self, name: str) -> bytes:
        """The member's bytes (bounded by the per-file limit)."""
        return b"".join(self._inflate(name))

    def copy_to(self, name: str, target: Path) -> None:
        """Stream the member into the new file ``target`` (which must not exist)."""
        with open(target, "xb") as out:
            for piece in self._inflate(name):
                out.write(piece)

    def close(self) -> None:
        self.zf.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def extract_zip(archive: Path, dest: Path, limits: ArchiveLimits, what: str = "zip") -> list[str]:
    """Extract ``archive`` into the new folder ``dest``, all or nothing; returns the file names.

    The files are written to a temporary sibling folder that is renamed to ``dest`` once complete,
    so ``dest`` either does not exist or holds the whole archive. An existing ``dest`` (the same
    content stored before) is left as it is. An archive without a single file is refused: every
    caller needs something to work on, and an empty folder stored under a digest helps nobody.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with (
            open(archive, "rb") as f,
            SafeZip(
                f,
                max_members=limits.max_members,
                max_total_bytes=limits.max_total_bytes,
                max_file_bytes=limits.max_file_bytes,
                what=what,
            ) as source,
        ):
            names = source.names()
            if not names:
                raise InvalidArchive(f"{what}: the archive holds no files")
            for name in names:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                source.copy_to(name, target)
        if dest.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names
