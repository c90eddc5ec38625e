"""Content-defined chunking of package files (FastCDC 2020, through ``pyfastcdc``).

Only the side that publishes packages chunks them (the control plane at upload, the
``model-packager chunks`` command); a device only reads the resulting ``ChunkIndex``, so
``pyfastcdc`` is a dependency of the control plane, not of the agent.

The sizes are fixed for every package: chunks of two versions can only match when both were cut
with the same settings. 8 KiB on average (2 KiB min, 32 KiB max) was chosen on the real case
(``scripts/bench-delta``): the digits CNN with only its last layer retrained shares all but
6-8% of its 1.5 MB package with the previous version at 8 KiB, ~15% at 16 KiB, ~31% at 64 KiB;
each changed stretch (the manifest, the head's weights in each variant, the golden vectors)
costs about one chunk, so smaller chunks waste less around it. Smaller still gains little
(~5% at 4 KiB) for twice the index (36 bytes per chunk: ~90 KB for a 20 MiB package).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyfastcdc import FastCDC

from model_packager.chunk_index import ChunkIndex

AVG_SIZE = 8 * 1024
MIN_SIZE = AVG_SIZE // 4
MAX_SIZE = AVG_SIZE * 4


def chunk_file(path: Path) -> ChunkIndex:
    """The chunk index of a file (an empty file has no chunks)."""
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)
    digests: list[bytes] = []
    sizes: list[int] = []
    if Path(path).stat().st_size:  # pyfastcdc cannot map an empty file
        for chunk in cdc.cut_file(str(path)):
            digests.append(hashlib.sha256(chunk.data).digest())
            sizes.append(chunk.length)
    return ChunkIndex(MIN_SIZE, AVG_SIZE, MAX_SIZE, tuple(digests), tuple(sizes))


def missing_bytes(new: ChunkIndex, held: set[bytes]) -> tuple[int, int]:
    """(chunks, bytes) of ``new`` a holder of the ``held`` digests must fetch; a chunk that
    occurs several times in ``new`` is fetched once."""
    seen: set[bytes] = set()
    count = size = 0
    for digest, n in zip(new.digests, new.sizes, strict=True):
        if digest in held or digest in seen:
            continue
        seen.add(digest)
        count += 1
        size += n
    return count, size
