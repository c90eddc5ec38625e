"""The dataset store on disk: sample files by sha256, cached thumbnails, published versions.

```
<dataset_dir>/objects/<aa>/<sha256>          sample bytes, immutable, shared by datasets
<dataset_dir>/thumbnails/<aa>/<sha256>.png   made on first request
<dataset_dir>/versions/<dataset id>/V001/    a published version (see docs/control-plane.md)
```

It is a separate store from the package blob folder because versions hard-link sample files
(publishing 10,000 images must cost little more than writing a manifest), which needs local
paths. Every write goes to a temporary name in the same folder and is renamed into place, so a
crash leaves either the old state or the new one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from control_plane.datasets.images import thumbnail


class DatasetStore:
    def __init__(self, root: Path, thumbnail_size: int = 128) -> None:
        self.root = root
        self.objects = root / "objects"
        self.thumbs = root / "thumbnails"
        self.versions = root / "versions"
        self.staging = root / "staging"
        self.thumbnail_size = thumbnail_size
        self._objects = str(self.objects)
        self._tmp_ids = itertools.count()
        for d in (self.objects, self.thumbs, self.versions, self.staging):
            d.mkdir(parents=True, exist_ok=True)

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.object_path(digest).exists()

    def put_bytes(self, digest: str, data: bytes) -> bool:
        """Store ``data`` under ``digest``; returns False when it was already there.

        This runs once per imported file, so it stays at the bare system calls (stat, open,
        write, close, rename on string paths; the folder is made only when the open finds it
        missing): with pathlib, a buffered file object, a mkdir and a uuid per file, the Python
        around the calls took ~190 us per small image instead of ~110 us.
        The temporary name is unique per process (pid and a counter; ``O_EXCL`` refuses a
        clash) and the rename is atomic, so a reader never sees a partly written object.
        """
        folder = os.path.join(self._objects, digest[:2])
        target = os.path.join(folder, digest)
        if os.path.exists(target):
            return False
        tmp = os.path.join(folder, f".{digest}.{os.getpid()}.{next(self._tmp_ids)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, target)
        return True

    def delete(self, digest: str) -> None:
        self.object_path(digest).unlink(missing_ok=True)
        (self.thumbs / digest[:2] / f"{digest}.png").unlink(missing_ok=True)

    def read(self, digest: str) -> bytes:
        return self.object_path(digest).read_bytes()

    def thumbnail(self, digest: str) -> Path:
        path = self.thumbs / digest[:2] / f"{digest}.png"
        if not path.exists():
            data = thumbnail(self.read(digest), self.thumbnail_size)
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{digest}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def link_into(self, digest: str, target: Path) -> None:
        """Put the object at ``target`` (hard link; copy across filesystems)."""
        try:
            os.link(self.object_path(digest), target)
        except OSError:
            shutil.copyfile(self.object_path(digest), target)

    def version_dir(self, dataset_id: str, name: str) -> Path:
        return self.versions / dataset_id / name

    def new_version_tmp(self, dataset_id: str) -> Path:
        parent = self.versions / dataset_id
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".publishing-", dir=parent))

    def staging_file(self, suffix: str) -> Path:
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.staging)
        os.close(fd)
        return Path(name)
