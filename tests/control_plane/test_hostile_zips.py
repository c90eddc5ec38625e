"""Every endpoint that takes a zip refuses the same hostile zips the same way, and keeps nothing.

The three zip uploads (dataset archive import, training code, model import) share one reader,
``control_plane.core.archives``; this module sends each of them the same set of hostile zips and
asserts the same status and error name per case (see "Uploaded archives" in
docs/control-plane.md), that no file was left anywhere under the data folder (staging, dataset
objects, training code, model imports) and that no database row was added. A good zip is the
positive control: each endpoint accepts it.

One app serves the module (limits made small through settings), so the cases cost a request each;
the model import's conversion executor is replaced by one that converts nothing, since only the
upload path is under test.
"""

from __future__ import annotations

import io
import random
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from control_plane.core.context import AppContext
from control_plane.datasets.models import Annotation, Label, Sample
from control_plane.registry.deps import get_conversions
from control_plane.registry.keys.service import signing_key_path
from control_plane.registry.models import ModelVersion
from control_plane.training.runtime import runtime_for
from tests.datasets.conftest import API, API_TOKEN, brokerless_app, digit_png, make_settings

MAX_MEMBERS = 8
MAX_ARCHIVE_BYTES = 300_000
MAX_UPLOAD_BYTES = 600_000
TABLES = (Sample, Label, Annotation, ModelVersion)


# --- the zips --------------------------------------------------------------------------------


def _png() -> bytes:
    return digit_png(3, random.Random(7))


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return bytearray(buf.getvalue())


def _with_good(**members: bytes) -> bytearray:
    """A valid sample next to the hostile member, so a per-item report would have had a choice."""
    return _zip({"digits/good.png": _png(), **members})


def _headers(raw: bytearray, name: str) -> tuple[int, int]:
    """Offsets of ``name``'s local header and central directory entry in the zip ``raw``."""
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        local = zf.getinfo(name).header_offset
    encoded = name.encode()
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        length = int.from_bytes(raw[central + 28 : central + 30], "little")
        if bytes(raw[central + 46 : central + 46 + length]) == encoded:
            return local, central
        central = raw.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"{name} not in the central directory")


def forged_size() -> bytes:
    """A zip bomb in miniature: a member declares 10 bytes and inflates to 250,000."""
    raw = _zip(
        {"digits/good.png": _png(), "digits/bomb.png": b"\0" * 250_000}, zipfile.ZIP_DEFLATED
    )
    local, central = _headers(raw, "digits/bomb.png")
    for offset in (local + 22, central + 24):  # uncompressed size, local header and directory
        raw[offset : offset + 4] = (10).to_bytes(4, "little")
    return bytes(raw)


def encrypted() -> bytes:
    """A member flagged as encrypted (general purpose bit 0), in both headers."""
    raw = _with_good(**{"digits/secret.png": _png()})
    local, central = _headers(raw, "digits/secret.png")
    raw[local + 6] |= 0x1
    raw[central + 8] |= 0x1
    return bytes(raw)


def symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("digits/good.png", _png())
        info = zipfile.ZipInfo("digits/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def duplicate() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: the point here
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("digits/good.png", _png())
            zf.writestr("digits/good.png", _png())
    return buf.getvalue()


def total_over_limit() -> bytes:
    """Four members under every per-file limit whose sum passes the archive limit."""
    members = {f"digits/{i}.png": bytes([i]) * 90_000 for i in range(4)}
    return bytes(_zip(members, zipfile.ZIP_DEFLATED))


@dataclass(frozen=True)
class Case:
    id: str
    body: Callable[[], bytes]
    status: int
    error: str


CASES = [
    Case(
        "absolute-path", lambda: bytes(_with_good(**{"/etc/evil.png": b"x"})), 422, "InvalidArchive"
    ),
    Case(
        "dot-dot",
        lambda: bytes(_with_good(**{"digits/../../evil.png": b"x"})),
        422,
        "InvalidArchive",
    ),
    Case("drive-letter", lambda: bytes(_with_good(**{"C:/evil.png": b"x"})), 422, "InvalidArchive"),
    Case(
        "backslash", lambda: bytes(_with_good(**{"digits\\evil.png": b"x"})), 422, "InvalidArchive"
    ),
    Case("symlink", symlink, 422, "InvalidArchive"),
    Case(
        "file-and-folder",
        lambda: bytes(_with_good(model=b"x", **{"model/x": b"y"})),
        422,
        "InvalidArchive",
    ),
    Case("same-name-twice", duplicate, 422, "InvalidArchive"),
    Case("forged-size", forged_size, 422, "InvalidArchive"),
    Case("encrypted", encrypted, 422, "InvalidArchive"),
    Case("not-a-zip", lambda: b"this is not a zip archive", 422, "InvalidArchive"),
    Case("empty-upload", lambda: b"", 422, "InvalidRequest"),
    Case("total-over-limit", total_over_limit, 413, "ArchiveTooLarge"),
    Case(
        "too-many-members",
        lambda: bytes(_zip({f"digits/{i}.png": b"x" for i in range(MAX_MEMBERS + 1)})),
        413,
        "ArchiveTooLarge",
    ),
    Case("upload-over-limit", lambda: bytes(MAX_UPLOAD_BYTES + 1), 413, "PayloadTooLarge"),
]


# --- the endpoints ---------------------------------------------------------------------------


class _NoConversions:
    """Stands in for the registry's conversion executor: the upload is under test, not the
    conversion (which would start a converter process per accepted model)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(None)
        return future


@dataclass
class Plane:
    api: TestClient
    ctx: AppContext
    data_dir: Path
    dataset_id: str

    def target(self, endpoint: str) -> tuple[str, dict[str, str]]:
        """The endpoint's URL and the form fields it needs besides ``file``."""
        if endpoint == "dataset-archive":
            return f"{API}/datasets/{self.dataset_id}/archive", {"format": "imagefolder"}
        if endpoint == "training-code":
            return f"{API}/training/code", {}
        assert endpoint == "model-import"
        return f"{API}/models/import", {"name": "hostile"}

    def post(self, endpoint: str, body: bytes) -> httpx.Response:
        url, fields = self.target(endpoint)
        return self.api.post(
            url, files={"file": ("upload.zip", body, "application/zip")}, data=fields
        )

    def post_chunked(self, endpoint: str, size: int) -> httpx.Response:
        """A multipart body of unknown length (chunked), as a streaming client sends it."""
        url, fields = self.target(endpoint)
        boundary = "hostile-zips-boundary"

        def body() -> Iterator[bytes]:
            for name, value in fields.items():
                yield (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                    f"{value}\r\n"
                ).encode()
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="upload.zip"\r\nContent-Type: application/zip\r\n\r\n'
            ).encode()
            for start in range(0, size, 64 * 1024):
                yield bytes(min(64 * 1024, size - start))
            yield f"\r\n--{boundary}--\r\n".encode()

        return self.api.post(
            url,
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    def files(self) -> set[str]:
        """Every file and temporary folder under the data folder, the database aside."""
        found = set()
        for p in self.data_dir.rglob("*"):
            rel = p.relative_to(self.data_dir).as_posix()
            if rel.startswith("control-plane.db"):
                continue
            if p.is_file() or p.name.startswith((".extract-", "upload-")):
                found.add(rel)
        return found

    def rows(self) -> dict[str, int]:
        with self.ctx.sessions() as session:
            return {
                t.__tablename__: session.scalar(select(func.count()).select_from(t)) for t in TABLES
            }


ENDPOINTS = ("dataset-archive", "training-code", "model-import")
ACCEPTED = {"dataset-archive": 200, "training-code": 201, "model-import": 202}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("hostile-zips")
    settings = make_settings(
        tmp,
        dev_mode=True,  # the registry generates its signing key
        max_upload_bytes=MAX_UPLOAD_BYTES,
        dataset_max_upload_bytes=MAX_UPLOAD_BYTES,
        dataset_max_file_bytes=200_000,
        dataset_max_archive_members=MAX_MEMBERS,
        dataset_max_archive_bytes=MAX_ARCHIVE_BYTES,
        training_code_max_archive_members=MAX_MEMBERS,
        training_code_max_archive_bytes=MAX_ARCHIVE_BYTES,
        model_max_archive_members=MAX_MEMBERS,
        model_max_archive_bytes=MAX_ARCHIVE_BYTES,
    )
    app, ctx = brokerless_app(settings)
    app.dependency_overrides[get_conversions] = _NoConversions
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    runtime = runtime_for(app)
    signing_key_path(ctx)  # made on first import in dev mode: a key, not something an upload keeps
    try:
        r = api.post(f"{API}/datasets", json={"name": "hostile", "type": "image_classification"})
        assert r.status_code == 201, r.text
        yield Plane(api, ctx, settings.data_dir, str(r.json()["id"]))
    finally:
        runtime.stop()
        ctx.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_zip_refused_whole(plane: Plane, case: Case, endpoint: str) -> None:
    files, rows = plane.files(), plane.rows()
    r = plane.post(endpoint, case.body())
    assert (r.status_code, r.json()["error"]) == (case.status, case.error), r.text
    assert "Traceback" not in r.text
    assert plane.files() == files, "a refused upload left files behind"
    assert plane.rows() == rows, "a refused upload left database rows behind"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_upload_over_limit_without_length(plane: Plane, endpoint: str) -> None:
    """No Content-Length to refuse from: the limit still answers 413 as the body passes it."""
    files, rows = plane.files(), plane.rows()
    r = plane.post_chunked(endpoint, MAX_UPLOAD_BYTES + 1)
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()["error"]) == (413, "PayloadTooLarge"), r.text
    assert plane.files() == files and plane.rows() == rows


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_good_zip_accepted(plane: Plane, endpoint: str) -> None:
    """The positive control: the same reader accepts an ordinary zip on every endpoint."""
    body = bytes(
        _zip(
            {"digits/a.png": _png(), "model/model.onnx": b"onnx", "./notes/readme.txt": b"hi"},
            zipfile.ZIP_DEFLATED,
        )
    )
    r = plane.post(endpoint, body)
    assert r.status_code == ACCEPTED[endpoint], r.text
    if endpoint == "dataset-archive":
        # The other two members are not images: reported per item, the image is imported.
        assert r.json()["imported"] == 1 and len(r.json()["errors"]) == 2
    elif endpoint == "training-code":
        assert r.json()["files"] == ["digits/a.png", "model/model.onnx", "notes/readme.txt"]
    else:
        assert r.json()["source_kind"] == "onnx"
