"""A package's chunk index: its content-defined chunks, by sha256 and size, in file order.

Why it exists: a new version of a model usually shares most of its bytes with the previous one
(a retrained head, a new label set), but at shifted offsets, so fixed-size chunks of the two
files hardly ever match. Content-defined chunking (FastCDC, ``model_packager.cdc``) cuts where
the content says, so unchanged stretches give the same chunks in both files; naming each chunk by
its sha256 lets a device that holds one version fetch only the chunks of the next one it lacks.

This module is only the format (pure Python, no chunker): the agent reads indexes, the control
plane and the packager also write them. The encoding (all integers big-endian)::

    magic         8 bytes  b"EPKCDC1\\n"
    min_size      u32      the chunker's parameters, recorded for the reader's information
    avg_size      u32
    max_size      u32
    package_size  u64      the sum of the chunk sizes
    count         u32
    count x       32-byte sha256 of the chunk, u32 size

Chunk ``i`` covers ``[offset(i), offset(i) + size(i))`` where ``offset(i)`` is the sum of the
sizes before it. The sha256 of the encoded bytes is what the desired state pins.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import cached_property

from model_packager.errors import InvalidPackage

MAGIC = b"EPKCDC1\n"
_HEAD = struct.Struct(">8sIIIQI")
_ENTRY = struct.Struct(">32sI")
#: No chunker setting may cut bigger chunks than this (FastCDC's own upper bound).
MAX_CHUNK_BYTES = 16 << 20
#: Bounds the index of the largest package an archive may be (4 GiB) at the default settings.
MAX_CHUNKS = 1 << 20


@dataclass(frozen=True)
class ChunkIndex:
    """The content-defined chunks of one file, in order."""

    min_size: int
    avg_size: int
    max_size: int
    digests: tuple[bytes, ...]  # raw 32-byte sha256 of each chunk
    sizes: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.digests)

    @property
    def package_size(self) -> int:
        return sum(self.sizes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, at = [], 0
        for size in self.sizes:
            out.append(at)
            at += size
        return tuple(out)

    def encode(self) -> bytes:
        head = _HEAD.pack(
            MAGIC, self.min_size, self.avg_size, self.max_size, self.package_size, self.count
        )
        pairs = zip(self.digests, self.sizes, strict=True)
        return head + b"".join(_ENTRY.pack(d, s) for d, s in pairs)

    def sha256(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> ChunkIndex:
        """The index in ``data``; ``InvalidPackage`` saying what is wrong with it otherwise."""
        if len(data) < _HEAD.size:
            raise InvalidPackage(f"chunk index is {len(data)} bytes, shorter than its header")
        magic, lo, avg, hi, total, count = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise InvalidPackage("not a chunk index (bad magic)")
        if count > MAX_CHUNKS or len(data) != _HEAD.size + count * _ENTRY.size:
            raise InvalidPackage(f"chunk index of {len(data)} bytes cannot hold {count} chunks")
        if not 0 < lo <= avg <= hi <= MAX_CHUNK_BYTES:
            raise InvalidPackage(f"chunk index has impossible sizes {lo}/{avg}/{hi}")
        entries = list(_ENTRY.iter_unpack(memoryview(data)[_HEAD.size :]))
        digests = [digest for digest, _ in entries]
        sizes = [size for _, size in entries]
        if sizes and not 0 < min(sizes) <= max(sizes) <= hi:
            i, size = next((i, n) for i, n in enumerate(sizes) if not 0 < n <= hi)
            raise InvalidPackage(f"chunk {i} of the index is {size} bytes (max {hi})")
        if sum(sizes) != total:
            raise InvalidPackage(f"chunk index sizes add up to {sum(sizes)}, not {total}")
        return cls(lo, avg, hi, tuple(digests), tuple(sizes))
