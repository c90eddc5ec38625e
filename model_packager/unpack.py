"""Verify and extract a package in one pass over its bytes.

``verify_package`` + ``PackageReader.digest`` + ``extract_package`` read an archive four times
(structure, member digests, whole-file digest, extraction with digests again). An agent pays that
on every install, for every MiB. ``unpack_verified`` reads the file once, sequentially:

- every byte read feeds the whole-file sha256 (the package's name) as it passes;
- the tar is parsed as a stream; the manifest and signature are kept in memory, every other
  member is written to a staging folder while its own sha256 is computed;
- the signature is checked once, through the caller's ``verify`` (so an agent can keep
  ``cryptography`` out of its own memory), in a thread started as soon as the manifest and
  signature have streamed past (``write_archive`` puts them first): the check (a child process,
  for an agent) runs beside the hashing of the files instead of after it, and a refused
  signature stops the pass at the next chunk instead of after the whole file;
- at the end of the file, every pinned digest and size is compared, and anything the manifest
  does not pin fails the package.

Nothing is read twice and nothing is trusted before every check passed: the staging folder is a
hidden temporary sibling, removed on any failure; the caller renames it into place (the install's
``stage`` step). The structural limits are those of ``archive.py`` (paths, links, devices, member
and size bounds), applied to each member as it arrives, before its bytes are written.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from model_packager.archive import ArchiveLimits, _check_member
from model_packager.errors import DigestMismatch, InvalidPackage, UnsafeArchive
from model_packager.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

_CHUNK = 1 << 20

#: ``verify(manifest_bytes, signature_bytes) -> key id``; raises ``SignatureError``.
SignatureCheck = Callable[[bytes, bytes | None], str]


@dataclass(frozen=True)
class UnpackedPackage:
    """A package that passed every check, extracted into ``staged`` (not yet in place)."""

    digest: str
    size: int
    manifest: Manifest
    manifest_bytes: bytes
    key_id: str
    staged: Path


class _HashingReader(io.RawIOBase):
    """A file read front to back, every byte fed to one sha256 as it passes (unless the caller
    already knows the file's digest: ``hash_bytes`` False only counts them)."""

    def __init__(self, f: io.BufferedReader, hash_bytes: bool = True) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._hash = hash_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(buffer)
        if n:
            if self._hash:
                self.sha256.update(memoryview(buffer)[:n])
            self.size += n
        return n or 0


def unpack_verified(
    path: Path,
    verify: SignatureCheck,
    staging_parent: Path,
    limits: ArchiveLimits | None = None,
    known_digest: str | None = None,
) -> UnpackedPackage:
    """Read ``path`` once: whole-file digest, signature, every member digest; extract into a
    new hidden folder under ``staging_parent``. Raises a ``PackageError`` (nothing left behind)
    when anything is wrong.

    ``known_digest``: the file's sha256, already checked by the caller as it wrote the file (the
    fleet agent computes it from the chunks as they arrive); it is then not computed again. The
    signature and every member digest are checked all the same."""
    limits = limits or ArchiveLimits()
    path = Path(path)
    staging_parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".unpack-", suffix=".partial", dir=staging_parent))
    try:
        with open(path, "rb") as raw, _Signature(verify) as signature:
            reader = _HashingReader(raw, known_digest is None)  # type: ignore[arg-type]
            try:
                manifest_bytes, signature_bytes, written = _stream(
                    reader, staged, limits, signature
                )
            except (tarfile.TarError, EOFError) as exc:
                raise InvalidPackage(
                    f"{path.name}: not a readable package archive ({exc})"
                ) from exc
            while reader.read(_CHUNK):  # the end-of-archive padding is part of the digest
                pass
            if manifest_bytes is None:
                raise InvalidPackage(f"{path.name}: no {MANIFEST_NAME} in the archive")
            signature.start(manifest_bytes, signature_bytes)  # unless started while streaming
            manifest, key_id = signature.result()
        _check_pins(manifest, written)
        (staged / MANIFEST_NAME).write_bytes(manifest_bytes)
        if signature_bytes is not None:
            (staged / SIGNATURE_NAME).write_bytes(signature_bytes)
        digest = known_digest or reader.sha256.hexdigest()
        return UnpackedPackage(digest, reader.size, manifest, manifest_bytes, key_id, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


class _Signature:
    """The signature check, run in a thread beside the rest of the pass.

    ``start`` parses the manifest first (a broken one is an ``InvalidPackage`` at once, before
    any signature verdict), then submits ``verify``. Leaving the context waits for the check, so
    no thread or child outlives the pass.
    """

    def __init__(self, verify: SignatureCheck) -> None:
        self._verify = verify
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[str] | None = None
        self._manifest: Manifest | None = None

    def start(self, manifest_bytes: bytes, signature_bytes: bytes | None) -> None:
        if self._future is not None:
            return
        self._manifest = Manifest.from_bytes(manifest_bytes)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="signature")
        self._future = self._pool.submit(self._verify, manifest_bytes, signature_bytes)

    def raise_if_refused(self) -> None:
        """Stop early: the check already said no."""
        f = self._future
        if f is not None and f.done():
            exc = f.exception()
            if exc is not None:
                raise exc

    def result(self) -> tuple[Manifest, str]:
        assert self._future is not None and self._manifest is not None
        return self._manifest, self._future.result()

    def __enter__(self) -> _Signature:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _stream(
    reader: _HashingReader, staged: Path, limits: ArchiveLimits, signature: _Signature
) -> tuple[bytes | None, bytes | None, dict[str, tuple[int, str]]]:
    """The tar's members in order: manifest and signature kept, the rest written with their
    digests. Returns (manifest, signature, {path: (size, sha256)})."""
    manifest = sig_bytes = None
    written: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    total = 0
    root = staged.resolve()
    with tarfile.open(fileobj=reader, mode="r|", bufsize=_CHUNK) as tar:
        for count, m in enumerate(tar, start=1):
            if count > limits.max_members:
                raise UnsafeArchive(f"archive has more than {limits.max_members} members")
            _check_member(m, limits)
            if m.name in seen:
                raise UnsafeArchive(f"member {m.name!r} appears twice")
            seen.add(m.name)
            total += m.size
            if total > limits.max_total_bytes:
                raise UnsafeArchive(f"archive content exceeds {limits.max_total_bytes} bytes")
            src = tar.extractfile(m)
            if src is None:
                raise InvalidPackage(f"cannot read {m.name!r}")
            if m.name in (MANIFEST_NAME, SIGNATURE_NAME):
                if m.size > limits.max_manifest_bytes:
                    raise UnsafeArchive(f"{m.name} is too large ({m.size} bytes)")
                data = src.read()
                if len(data) != m.size:
                    raise InvalidPackage(f"{m.name!r} is truncated")
                if m.name == MANIFEST_NAME:
                    manifest = data
                else:
                    sig_bytes = data
                continue
            if manifest is not None and sig_bytes is not None:
                signature.start(manifest, sig_bytes)  # the files hash while it runs
            target = staged / m.name
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchive(f"{m.name!r} escapes the package folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            size = 0
            with open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    signature.raise_if_refused()
                out.flush()
                os.fsync(out.fileno())
            if size != m.size:
                raise InvalidPackage(f"{m.name!r} is truncated")
            written[m.name] = (size, h.hexdigest())
    return manifest, sig_bytes, written


def _check_pins(manifest: Manifest, written: dict[str, tuple[int, str]]) -> None:
    pinned: dict[str, str] = {}
    for ref in manifest.files():
        got = written.get(ref.path)
        if got is None:
            raise InvalidPackage(f"manifest names {ref.path!r}, which the archive lacks")
        size, digest = got
        if size != ref.size:
            raise DigestMismatch(f"{ref.path} is {size} bytes, manifest says {ref.size}")
        if digest != ref.sha256:
            raise DigestMismatch(f"{ref.path}: sha256 does not match the manifest")
        pinned[ref.path] = ref.sha256
    extra = sorted(set(written) - set(pinned))
    if extra:
        raise InvalidPackage(f"archive holds files the manifest does not pin: {', '.join(extra)}")
