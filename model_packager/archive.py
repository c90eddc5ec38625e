"""The package archive: an uncompressed tar named by its own sha256.

Writing is deterministic (sorted members, zeroed owners and times) so the same inputs give the same
digest. Reading is defensive: every member is checked before anything touches the disk, and
extraction goes to a temporary sibling folder that is renamed into place only when every byte has
been verified, so a rejected or truncated package writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from model_packager.errors import DigestMismatch, InvalidPackage, UnsafeArchive
from model_packager.fsutil import fsync_dir
from model_packager.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

if TYPE_CHECKING:
    from model_packager.signing import TrustStore

PACKAGE_SUFFIX = ".edgepkg"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that keep a hostile archive from filling the disk or memory."""

    max_members: int = 64
    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 4 << 30
    max_manifest_bytes: int = 4 << 20


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex): the one file hash of both sides (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_filename(digest: str) -> str:
    return f"{digest}{PACKAGE_SUFFIX}"


def write_archive(
    dest_dir: Path,
    manifest_bytes: bytes,
    files: dict[str, Path | bytes],
    signature_bytes: bytes | None = None,
) -> Path:
    """Write a package into ``dest_dir``; returns its path, ``<sha256>.edgepkg``.

    ``files`` maps archive paths to source files or bytes. The file appears under its final name
    only once complete (write to a temporary name, fsync, rename).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".pkg-", suffix=".partial", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, MANIFEST_NAME, manifest_bytes)
            if signature_bytes is not None:
                _add_bytes(tar, SIGNATURE_NAME, signature_bytes)
            for name in sorted(files):
                src = files[name]
                if isinstance(src, bytes):
                    _add_bytes(tar, name, src)
                else:
                    info = _info(name, src.stat().st_size)
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = dest_dir / package_filename(sha256_file(tmp))
        os.replace(tmp, final)
        return final
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _check_member(m: tarfile.TarInfo, limits: ArchiveLimits) -> None:
    name = m.name
    p = PurePosixPath(name)
    if name.startswith("/") or p.is_absolute() or "\\" in name or ".." in p.parts or name == "":
        raise UnsafeArchive(f"member {name!r} has an absolute or parent-relative path")
    if m.issym() or m.islnk():
        raise UnsafeArchive(f"member {name!r} is a link")
    if m.isdev() or m.isfifo() or m.ischr() or m.isblk():
        raise UnsafeArchive(f"member {name!r} is a device or fifo")
    if not m.isfile() or m.issparse():
        raise UnsafeArchive(f"member {name!r} is not a regular file")
    if m.size > limits.max_member_bytes:
        raise UnsafeArchive(
            f"member {name!r} is {m.size} bytes, over the {limits.max_member_bytes} limit"
        )


@dataclass
class PackageReader:
    """An opened, structurally checked package; files are read lazily from the tar."""

    path: Path
    manifest_bytes: bytes
    signature_bytes: bytes | None
    manifest: Manifest
    members: dict[str, tarfile.TarInfo] = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_file(self.path)


def open_package(path: Path, limits: ArchiveLimits | None = None) -> PackageReader:
    """Read and check the archive's structure and manifest (no signature check, no digests)."""
    limits = limits or ArchiveLimits()
    path = Path(path)
    members: dict[str, tarfile.TarInfo] = {}
    manifest_bytes = signature_bytes = None
    total = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in _iter_members(tar, limits):
                _check_member(m, limits)
                if m.name in members:
                    raise UnsafeArchive(f"member {m.name!r} appears twice")
                total += m.size
                if total > limits.max_total_bytes:
                    raise UnsafeArchive(f"archive content exceeds {limits.max_total_bytes} bytes")
                members[m.name] = m
                if m.name in (MANIFEST_NAME, SIGNATURE_NAME):
                    if m.size > limits.max_manifest_bytes:
                        raise UnsafeArchive(f"{m.name} is too large ({m.size} bytes)")
                    data = _read_member(tar, m)
                    if m.name == MANIFEST_NAME:
                        manifest_bytes = data
                    else:
                        signature_bytes = data
            # Reading the last member's data proves the archive is not truncated.
            for m in members.values():
                if m.name not in (MANIFEST_NAME, SIGNATURE_NAME):
                    _drain(tar, m)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidPackage(f"{path.name}: not a readable package archive ({exc})") from exc
    if manifest_bytes is None:
        raise InvalidPackage(f"{path.name}: no {MANIFEST_NAME} in the archive")
    manifest = Manifest.from_bytes(manifest_bytes)
    for ref in manifest.files():
        if ref.path not in members:
            raise InvalidPackage(f"manifest names {ref.path!r}, which the archive lacks")
        if members[ref.path].size != ref.size:
            raise DigestMismatch(
                f"{ref.path} is {members[ref.path].size} bytes, manifest says {ref.size}"
            )
    pinned = {r.path for r in manifest.files()} | {MANIFEST_NAME, SIGNATURE_NAME}
    extra = sorted(set(members) - pinned)
    if extra:
        raise InvalidPackage(f"archive holds files the manifest does not pin: {', '.join(extra)}")
    return PackageReader(path, manifest_bytes, signature_bytes, manifest, members)


def _iter_members(tar: tarfile.TarFile, limits: ArchiveLimits) -> Iterator[tarfile.TarInfo]:
    for count, m in enumerate(tar, start=1):
        if count > limits.max_members:
            raise UnsafeArchive(f"archive has more than {limits.max_members} members")
        yield m


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    if f is None:
        raise InvalidPackage(f"cannot read {m.name!r}")
    data = f.read()
    if len(data) != m.size:
        raise InvalidPackage(f"{m.name!r} is truncated")
    return data


def _drain(tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    f = tar.extractfile(m)
    if f is None:
        raise InvalidPackage(f"cannot read {m.name!r}")
    left = m.size
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise InvalidPackage(f"{m.name!r} is truncated")
        left -= len(chunk)


def verify_package(
    path: Path, trust: TrustStore, limits: ArchiveLimits | None = None
) -> tuple[PackageReader, str]:
    """Check the signature by a trusted key and every pinned digest; returns reader and key id."""
    from model_packager.signing import verify_manifest  # cryptography only when verifying

    reader = open_package(path, limits)
    kid = verify_manifest(reader.manifest_bytes, reader.signature_bytes, trust)
    try:
        with tarfile.open(reader.path, mode="r:") as tar:
            for ref in reader.manifest.files():
                f = tar.extractfile(reader.members[ref.path])
                assert f is not None
                h = hashlib.sha256()
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                if h.hexdigest() != ref.sha256:
                    raise DigestMismatch(f"{ref.path}: sha256 does not match the manifest")
    except (tarfile.TarError, EOFError) as exc:
        # The file changed (e.g. was truncated) after open_package read it.
        raise InvalidPackage(f"{reader.path.name}: archive became unreadable ({exc})") from exc
    return reader, kid


def extract_package(reader: PackageReader, dest: Path) -> Path:
    """Extract every pinned file into ``dest`` (which must not exist), verifying digests.

    All or nothing: files go to a temporary sibling folder that is renamed to ``dest`` only when
    every digest matched. The manifest and signature are written beside the files. Missing parent
    folders of ``dest`` are created, and removed again if the extraction fails.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    created = _make_parents(dest.parent)
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", suffix=".partial", dir=dest.parent))
        try:
            _extract_files(reader, tmp)
        except (tarfile.TarError, EOFError) as exc:
            # The file changed (e.g. was truncated) after open_package read it.
            raise InvalidPackage(f"{reader.path.name}: archive became unreadable ({exc})") from exc
        (tmp / MANIFEST_NAME).write_bytes(reader.manifest_bytes)
        if reader.signature_bytes is not None:
            (tmp / SIGNATURE_NAME).write_bytes(reader.signature_bytes)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        # Folders this call created for ``dest`` go too: a failed extraction leaves nothing.
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; returns the ones created, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    created: list[Path] = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to remove
        created.append(p)
    return created


def _extract_files(reader: PackageReader, tmp: Path) -> None:
    with tarfile.open(reader.path, mode="r:") as tar:
        for ref in reader.manifest.files():
            target = tmp / ref.path
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise UnsafeArchive(f"{ref.path!r} escapes the package folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(reader.members[ref.path])
            assert src is not None
            h = hashlib.sha256()
            with open(target, "wb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != ref.sha256:
                raise DigestMismatch(f"{ref.path}: sha256 does not match the manifest")
