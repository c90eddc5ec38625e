"""Verify and extract a package in one pass over its bytes.

``verify_package`` + ``PackageReader.digest`` + ``extract_package`` read an archive four times
(structure, member digests, whole-file digest, extraction with digests again). An agent pays that
on every install, for every MiB. ``unpack_verified`` reads the file once, front to back:

- every byte read feeds the whole-file sha256 (the package's name) exactly once, in file order
  (``_HashingReader``: the tar headers as ``tarfile`` reads them, each member's bytes as they are
  extracted, the padding between them);
- the tar's headers are parsed by ``tarfile``; a member's bytes are read by position into one
  reused buffer, hashed and written from it (no copy through ``tarfile``'s stream buffers: those
  took three extra copies and allocations of every MiB); the manifest and signature are kept in
  memory, every other member is written to a staging folder while its own sha256 is computed;
- the signature is checked once, through the caller's ``verify`` (so an agent can keep
  ``cryptography`` out of its own memory), in a thread started as soon as the manifest and
  signature have been read (``write_archive`` puts them first): the check runs beside the
  hashing of the files instead of after it, and a refused signature stops the pass at the next
  buffer instead of after the whole file;
- at the end of the file, every pinned digest and size is compared, and anything the manifest
  does not pin fails the package.

Nothing is read twice and nothing is trusted before every check passed: the staging folder is a
hidden temporary sibling, removed on any failure; the caller renames it into place (the install's
``stage`` step). The structural limits are those of ``archive.py`` (paths, links, devices, sparse
files, member and size bounds), applied to each member as it arrives, before its bytes are
written.
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

#: Bytes read and written at a time. Not more: on the development VM's Linux 6.18 ext4, 1 MiB
#: writes into a new file cost up to 12x the kernel CPU of 256 KiB ones (45 against 3.7 ms for
#: 20 MiB), and 512 KiB saved nothing more.
_CHUNK = 256 << 10

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
    """The package file read by position, every byte fed to one sha256 exactly once and in file
    order whatever the order of the reads (bytes skipped over, such as the padding after a
    member, are read and fed when a later read passes them; ``finish`` feeds the rest). With
    ``hash_bytes`` False (the caller already knows the file's digest) nothing is hashed."""

    def __init__(self, f: io.FileIO, hash_bytes: bool = True) -> None:
        self._fd = f.fileno()
        self.sha256 = hashlib.sha256()
        self.size = os.fstat(self._fd).st_size
        self._hash = hash_bytes
        self._pos = 0
        self._hashed = 0  # bytes [0, _hashed) fed to sha256

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = os.preadv(self._fd, [buffer], self._pos)
        if n and self._hash:
            self._feed(self._pos, memoryview(buffer)[:n])
        self._pos += n
        return n

    def _feed(self, at: int, data: memoryview) -> None:
        if at > self._hashed:
            self._catch_up(at)
        end = at + len(data)
        if end > self._hashed:
            self.sha256.update(data[self._hashed - at :])
            self._hashed = end

    def _catch_up(self, upto: int) -> None:
        while self._hashed < upto:
            data = os.pread(self._fd, min(_CHUNK, upto - self._hashed), self._hashed)
            if not data:
                break
            self.sha256.update(data)
            self._hashed += len(data)

    def finish(self) -> None:
        """Feed what no read reached (the end-of-archive blocks) up to the end of the file."""
        if self._hash:
            self._catch_up(self.size)

    def read_exactly(self, offset: int, size: int, into: memoryview) -> memoryview:
        """``size`` bytes from ``offset`` into ``into`` (at most its length); a short file is an
        ``EOFError``."""
        self._pos = offset
        got = 0
        while got < size:
            n = self.readinto(into[got:size])
            if n == 0:
                raise EOFError(f"file ends {size - got} bytes early")
            got += n
        return into[:size]


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
        with open(path, "rb", buffering=0) as raw, _Signature(verify) as signature:
            reader = _HashingReader(raw, known_digest is None)  # type: ignore[arg-type]
            try:
                manifest_bytes, signature_bytes, written = _extract(
                    reader, staged, limits, signature
                )
            except (tarfile.TarError, EOFError) as exc:
                raise InvalidPackage(
                    f"{path.name}: not a readable package archive ({exc})"
                ) from exc
            reader.finish()  # the end-of-archive padding is part of the digest
            if manifest_bytes is None:
                raise InvalidPackage(f"{path.name}: no {MANIFEST_NAME} in the archive")
            signature.start(manifest_bytes, signature_bytes)  # unless started while extracting
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


def _extract(
    reader: _HashingReader, staged: Path, limits: ArchiveLimits, signature: _Signature
) -> tuple[bytes | None, bytes | None, dict[str, tuple[int, str]]]:
    """The tar's members in order: manifest and signature kept, the rest written with their
    digests. Returns (manifest, signature, {path: (size, sha256)})."""
    manifest = sig_bytes = None
    written: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    total = 0
    root = staged.resolve()
    buffer = memoryview(bytearray(_CHUNK))
    with tarfile.open(fileobj=reader, mode="r:") as tar:
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
            if m.name in (MANIFEST_NAME, SIGNATURE_NAME):
                if m.size > limits.max_manifest_bytes:
                    raise UnsafeArchive(f"{m.name} is too large ({m.size} bytes)")
                data = bytearray(m.size)
                reader.read_exactly(m.offset_data, m.size, memoryview(data))
                if m.name == MANIFEST_NAME:
                    manifest = bytes(data)
                else:
                    sig_bytes = bytes(data)
                continue
            if manifest is not None and sig_bytes is not None:
                signature.start(manifest, sig_bytes)  # the files hash while it runs
            target = staged / m.name
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchive(f"{m.name!r} escapes the package folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            written[m.name] = (m.size, _write_member(reader, m, target, buffer, signature))
    return manifest, sig_bytes, written


def _write_member(
    reader: _HashingReader,
    m: tarfile.TarInfo,
    target: Path,
    buffer: memoryview,
    signature: _Signature,
) -> str:
    """Copy the member's bytes to ``target`` through ``buffer``, hashing them on the way; their
    sha256. A member cut short by the end of the file is an ``EOFError``."""
    h = hashlib.sha256()
    offset, left = m.offset_data, m.size
    with open(target, "xb", buffering=0) as out:
        while left:
            step = min(left, len(buffer))
            data = reader.read_exactly(offset, step, buffer)
            h.update(data)
            while data:
                data = data[out.write(data) or 0 :]
            offset += step
            left -= step
            signature.raise_if_refused()
        os.fsync(out.fileno())
    return h.hexdigest()


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
