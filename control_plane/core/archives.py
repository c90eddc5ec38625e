"""Uploaded zip archives, read and extracted one safe way for every kind of upload.

Dataset archives, training code and model directories all arrive as zips. Each is checked before
anything is read or written:

- every member name is a safe relative POSIX path (no absolute paths, drive letters,
  backslashes, NUL or ``..``); a name that is both a file and a folder (``model`` and
  ``model/x``) is refused;
- only regular files and folders: symlinks, devices and encrypted members are refused;
- the member count, each member's declared size and the declared total are under the kind's
  limits (``ArchiveLimits``);
- while inflating, a member that yields more bytes than its header declared is refused: a forged
  small size cannot smuggle a zip bomb past the declared-size checks.

Every refusal is a whole-archive refusal: ``InvalidRequest`` (422) for what is malformed,
``PayloadTooLarge`` (413) for what is over a limit, and nothing is kept. Dot files and
``__MACOSX/`` entries are skipped, not refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from control_plane.core.errors import InvalidRequest, PayloadTooLarge

_READ = 1 << 16


@dataclass(frozen=True)
class ArchiveLimits:
    """How large one kind of uploaded archive may be, inflated."""

    max_members: int
    max_total_bytes: int
    max_file_bytes: int


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


class SafeZip:
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
        folders = {str(parent) for name in self._infos for parent in PurePosixPath(name).parents}
        clash = sorted(folders & set(self._infos))
        if clash:
            raise InvalidRequest(f"member {clash[0]!r}: both a file and a folder")
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


def extract_zip(archive: Path, dest: Path, limits: ArchiveLimits, what: str = "zip") -> list[str]:
    """Extract ``archive`` into the new folder ``dest``, all or nothing; returns the file names.

    The files are written to a temporary sibling folder that is renamed to ``dest`` once complete,
    so ``dest`` either does not exist or holds the whole archive. An existing ``dest`` (the same
    content stored before) is left as it is.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with open(archive, "rb") as f:
            source = SafeZip(
                f,
                max_members=limits.max_members,
                max_total_bytes=limits.max_total_bytes,
                max_file_bytes=limits.max_file_bytes,
                what=what,
            )
            try:
                names = source.names()
                for name in names:
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(source.read(name))
            finally:
                source.close()
        if dest.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names
