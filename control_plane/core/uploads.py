"""The one bounded copy of an uploaded stream to a staging file, hashed on the way.

Packages, training code and model imports arrive as request bodies of unknown size: each is copied
here under a byte limit (``PayloadTooLarge`` the moment it is passed, the partial file removed),
hashed while copied, and fsynced so a crash right after cannot leave a torn file that a later step
trusts.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from control_plane.core.errors import InvalidRequest, PayloadTooLarge

COPY_BUFFER = 1 << 20


def stage_upload(
    stream: BinaryIO,
    staging_dir: Path,
    limit: int,
    suffix: str,
    what: str = "upload",
    durable: bool = True,
) -> tuple[Path, str]:
    """Copy ``stream`` into a new file in ``staging_dir``; returns it and its sha256 (hex).

    Raises ``PayloadTooLarge`` past ``limit`` bytes and ``InvalidRequest`` for an empty upload;
    either way nothing is left behind. The caller removes the returned file when done.
    ``durable=False`` skips the fsync, for a file that is only read in place and then removed.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=staging_dir)
    path = Path(name)
    h = hashlib.sha256()
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while piece := stream.read(COPY_BUFFER):
                total += len(piece)
                if total > limit:
                    raise PayloadTooLarge(f"{what} exceeds the {limit}-byte upload limit")
                h.update(piece)
                out.write(piece)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        if total == 0:
            raise InvalidRequest(f"{what}: the upload is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, h.hexdigest()
