"""The content-defined chunks a device already holds, in the packages it installed.

A delta update needs to read chunks of installed packages back. The package files themselves are
not kept (they would double the disk a model takes): what is kept, per package installed over the
fleet channel, is one small file ``data_dir/fleet/held_chunks/<digest>.json`` with

- the package's chunk index, as the control plane sent it (checked against the desired state's
  ``cdc_index_sha256``);
- the archive's layout: where each member's bytes sit in the package file, and the bytes between
  them (tar headers, padding, the end-of-archive blocks; about 1 KiB per member plus 10 KiB),

so any byte range of the package can be re-derived from its extracted folder
(``data_dir/packages/<digest>/``, the same bytes, each checked against the manifest at install).
A chunk read back is checked against its sha256 before it is used: a file changed or damaged on
disk since is caught there (``LocalChunkMismatch``), never in the assembled package.

Only packages still in the committed state count; the files of the others are pruned.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write_json, read_json
from model_packager.chunk_index import ChunkIndex
from model_packager.errors import InvalidPackage

log = logging.getLogger(__name__)


class LocalChunkMismatch(Exception):
    """A chunk read back from an installed package does not match its digest."""

    def __init__(self, message: str, package: str) -> None:
        super().__init__(message)
        self.package = package  # the installed package's digest: not a source any more


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of the package from ``start``: a member's data, or literal gap bytes."""

    start: int
    length: int
    member: str | None  # None: bytes of ``literal`` from ``literal_at``
    literal_at: int = 0


@dataclass(frozen=True)
class HeldPackage:
    """One installed package whose bytes can be read back by range."""

    digest: str
    index: ChunkIndex
    segments: tuple[Segment, ...]
    literal: bytes
    folder: Path  # the extracted package

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the package file, from the extracted folder."""
        out = bytearray()
        starts = [s.start for s in self.segments]
        k = max(0, bisect.bisect_right(starts, offset) - 1)
        end = offset + length
        while offset < end and k < len(self.segments):
            seg = self.segments[k]
            lo, hi = max(offset, seg.start), min(end, seg.start + seg.length)
            if lo < hi:
                if seg.member is None:
                    at = seg.literal_at + lo - seg.start
                    out += self.literal[at : at + hi - lo]
                else:
                    with open(self._member_path(seg.member), "rb") as f:
                        f.seek(lo - seg.start)
                        out += f.read(hi - lo)
                offset = hi
            k += 1
        if len(out) != length:
            raise LocalChunkMismatch(
                f"package {self.digest[:12]} is shorter than its layout says", self.digest
            )
        return bytes(out)

    def _member_path(self, member: str) -> Path:
        path = (self.folder / member).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise LocalChunkMismatch(f"layout member {member!r} escapes its folder", self.digest)
        return path


def package_layout(path: Path) -> tuple[list[Segment], bytes]:
    """Where each member's data sits in an (uncompressed tar) package, and the bytes between."""
    with tarfile.open(path, mode="r:") as tar:
        members = [(m.offset_data, m.size, m.name) for m in tar.getmembers()]
    size = path.stat().st_size
    segments: list[Segment] = []
    literal = bytearray()
    pos = 0
    with open(path, "rb") as f:

        def gap(until: int) -> None:
            nonlocal pos
            if until > pos:
                f.seek(pos)
                segments.append(Segment(pos, until - pos, None, len(literal)))
                literal.extend(f.read(until - pos))
                pos = until

        for start, length, name in members:
            gap(start)
            if length:
                segments.append(Segment(start, length, name))
            pos = start + length
        gap(size)
    return segments, bytes(literal)


class HeldChunks:
    """The chunk indexes and layouts of installed packages, under one folder."""

    def __init__(self, root: Path, packages: Path) -> None:
        self.root = root
        self.packages = packages  # data_dir/packages: one extracted folder per digest
        root.mkdir(parents=True, exist_ok=True)

    def remember(self, digest: str, package: Path, index_bytes: bytes) -> None:
        """Keep what reading ``package`` back needs, once it is installed and verified."""
        index = ChunkIndex.decode(index_bytes)
        if index.package_size != package.stat().st_size:
            raise InvalidPackage(f"chunk index of {digest[:12]} does not cover the package")
        segments, literal = package_layout(package)
        atomic_write_json(
            self.root / f"{digest}.json",
            {
                "digest": digest,
                "index": base64.b64encode(index_bytes).decode(),
                "segments": [[s.start, s.length, s.member, s.literal_at] for s in segments],
                "literal": base64.b64encode(literal).decode(),
            },
        )

    def forget(self, digest: str) -> None:
        (self.root / f"{digest}.json").unlink(missing_ok=True)

    def prune(self, keep: set[str]) -> None:
        for p in self.root.glob("*.json"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)

    def load(self, committed: set[str]) -> list[HeldPackage]:
        """The remembered packages that are still installed; unreadable records are dropped."""
        out = []
        for digest in sorted(committed):
            path = self.root / f"{digest}.json"
            folder = self.packages / digest
            if not path.exists() or not folder.is_dir():
                continue
            try:
                doc = read_json(path)
                segments = tuple(Segment(a, b, c, d) for a, b, c, d in doc["segments"])
                out.append(
                    HeldPackage(
                        digest,
                        ChunkIndex.decode(base64.b64decode(doc["index"])),
                        segments,
                        base64.b64decode(doc["literal"]),
                        folder,
                    )
                )
            except (KeyError, TypeError, ValueError, InvalidPackage) as exc:
                log.warning("held chunks of %s unreadable (%s); forgotten", digest[:12], exc)
                path.unlink(missing_ok=True)
        return out


class ChunkSource:
    """Every held chunk by digest: where to read it back, checked on the way out."""

    def __init__(self, held: list[HeldPackage]) -> None:
        self._where: dict[bytes, tuple[HeldPackage, int, int]] = {}
        for pkg in held:
            offsets = pkg.index.offsets
            for i, digest in enumerate(pkg.index.digests):
                self._where.setdefault(digest, (pkg, offsets[i], pkg.index.sizes[i]))

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._where

    def __len__(self) -> int:
        return len(self._where)

    def read(self, digest: bytes) -> bytes:
        """The chunk's bytes; ``LocalChunkMismatch`` when they no longer match its digest."""
        pkg, offset, size = self._where[digest]
        try:
            data = pkg.read(offset, size)
        except OSError as exc:
            raise LocalChunkMismatch(f"{pkg.digest[:12]} unreadable: {exc}", pkg.digest) from exc
        if hashlib.sha256(data).digest() != digest:
            raise LocalChunkMismatch(
                f"chunk {digest.hex()[:16]} of installed package {pkg.digest[:12]} does not "
                "match its digest (the files changed on disk)",
                pkg.digest,
            )
        return data
