"""Uploaded batch inputs: a zip of images, ``.npy`` files and tensor JSONL files, or one file.

A batch service predicts over a published dataset version or over one of these uploads. An
upload is stored by its sha256 (the same bytes twice are stored once, as training code is) under
``<services_dir>/_inputs/<sha256>/``: ``files/`` (the extracted zip, or the one file) and
``sources.json``, the list of inputs in the order the batch job reads them. The leading ``_``
keeps the folder apart from the services' own folders (a service name cannot start with it).

Every input is checked when it arrives, so a bad upload is refused whole (422, nothing kept)
instead of failing row by row later: a member that is not an input (an image, ``.npy`` or
``.jsonl``) refuses the zip, a ``.npy`` whose header cannot be read or that holds Python objects
is refused, and every non-blank line of a tensor JSONL must be an ``{"inputs": {...}}`` object
(one input per line, addressed ``file.jsonl#<line>`` as the agent's batch jobs address it).
Whether an image decodes, or a tensor fits the model, is the model's business: such an input
fails its own row. Size limits are the dataset uploads' (``CONTROL_PLANE_DATASET_MAX_*``): a
batch input is data of the same kind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from control_plane.core.archives import ArchiveLimits, check_relative, extract_zip
from control_plane.core.context import AppContext
from control_plane.core.errors import InvalidRequest, NotFound
from control_plane.core.uploads import stage_upload
from control_plane.services.schemas import InputUpload

logger = logging.getLogger(__name__)

#: Encoded images the agent's batch jobs decode through the package's preprocessing.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
NPY = ".npy"
TENSOR_LINES = ".jsonl"
INPUT_SUFFIXES = (NPY, TENSOR_LINES, *IMAGE_SUFFIXES)
UPLOAD_SUFFIXES = (".zip", NPY, TENSOR_LINES)

FOLDER = "_inputs"
SOURCES = "sources.json"


class InputStore:
    """The uploaded batch inputs of one control plane."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.root = ctx.settings.resolved_services_dir / FOLDER

    def _folder(self, upload_id: str) -> Path:
        if len(upload_id) != 64 or not all(c in "0123456789abcdef" for c in upload_id):
            raise NotFound(f"batch input {upload_id} not found")
        return self.root / upload_id

    def upload(self, stream: BinaryIO, filename: str) -> InputUpload:
        """Store one upload (``.zip``, ``.npy`` or ``.jsonl``, by its file name); refuse it whole
        when anything in it is not an input."""
        name = Path(filename or "").name
        suffix = Path(name).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise InvalidRequest(
                f"batch input {name!r}: expected a .zip (of images, .npy and .jsonl files), "
                "a .npy or a .jsonl file"
            )
        limits = self.ctx.settings.datasets
        staged, digest = stage_upload(
            stream,
            self.ctx.settings.staging_dir,
            limits.max_upload_bytes,
            suffix,
            "batch input",
            durable=False,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / digest
        try:
            if not dest.exists():
                self._store(staged, suffix, name, dest)
        finally:
            staged.unlink(missing_ok=True)
        logger.info("stored batch input %s (%s)", digest, name)
        return self.get(digest)

    def _store(self, staged: Path, suffix: str, name: str, dest: Path) -> None:
        """Extract or copy into a temporary sibling, list and check the inputs, then rename: the
        folder either holds a whole checked upload or does not exist."""
        limits = self.ctx.settings.datasets
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))
        try:
            files = tmp / "files"
            if suffix == ".zip":
                archive = ArchiveLimits(
                    max_members=limits.max_archive_members,
                    max_total_bytes=limits.max_archive_bytes,
                    max_file_bytes=limits.max_file_bytes,
                )
                extract_zip(staged, files, archive, what="batch input")
            else:
                files.mkdir()
                shutil.copyfile(staged, files / check_relative(name, "file"))
            sources = list_sources(files)
            info = {
                "id": dest.name,
                "filename": name,
                "files": len({s["source"].split("#")[0] for s in sources}),
                "count": len(sources),
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "sources": sources,
            }
            (tmp / SOURCES).write_text(json.dumps(info))
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _info(self, upload_id: str) -> dict[str, Any]:
        path = self._folder(upload_id) / SOURCES
        if not path.is_file():
            raise NotFound(f"batch input {upload_id} not found")
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    def get(self, upload_id: str) -> InputUpload:
        return InputUpload.model_validate(self._info(upload_id))

    def list(self) -> list[InputUpload]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if (p / SOURCES).is_file()]
        return sorted((self.get(i) for i in found), key=lambda u: u.created_at)

    def sources(self, upload_id: str) -> list[dict[str, str]]:
        """``[{source, path}]`` in job order: ``source`` relative to the upload (``x.jsonl#3``
        for a tensor line), ``path`` the absolute reference the agent reads."""
        files = self._folder(upload_id) / "files"
        return [
            {"source": s["source"], "path": str(files.resolve() / s["source"])}
            for s in self._info(upload_id)["sources"]
        ]

    def delete(self, upload_id: str) -> None:
        self._info(upload_id)  # NotFound first
        shutil.rmtree(self._folder(upload_id))
        logger.info("deleted batch input %s", upload_id)


def list_sources(files: Path) -> list[dict[str, str]]:
    """The inputs of an upload's files, sorted by path; a tensor JSONL gives one per line."""
    sources: list[dict[str, str]] = []
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = path.relative_to(files).as_posix()
        suffix = path.suffix.lower()
        if suffix not in INPUT_SUFFIXES:
            raise InvalidRequest(
                f"batch input {rel!r}: not an input (images {', '.join(IMAGE_SUFFIXES)}, "
                ".npy or .jsonl)"
            )
        if suffix == NPY:
            _check_npy(path, rel)
            sources.append({"source": rel})
        elif suffix == TENSOR_LINES:
            sources.extend({"source": f"{rel}#{n}"} for n in _tensor_lines(path, rel))
        else:
            sources.append({"source": rel})
    if not sources:
        raise InvalidRequest("batch input: no inputs in the upload")
    return sources


def _check_npy(path: Path, rel: str) -> None:
    """A readable ``.npy`` header of a numeric array (the agent loads without pickle)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidRequest(f"batch input {rel!r}: not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise InvalidRequest(f"batch input {rel!r}: not a numeric .npy array")


def _tensor_lines(path: Path, rel: str) -> list[int]:
    """Line numbers (1-based) of a tensor JSONL's inputs; any other non-blank line refuses it."""
    numbers = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"batch input {rel!r}: not UTF-8 text") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"batch input {rel!r} line {n}: not JSON ({exc})") from None
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        if not isinstance(inputs, dict) or not inputs:
            raise InvalidRequest(
                f'batch input {rel!r} line {n}: expected {{"inputs": {{name: tensor, ...}}}}'
            )
        numbers.append(n)
    if not numbers:
        raise InvalidRequest(f"batch input {rel!r}: no tensor lines")
    return numbers
