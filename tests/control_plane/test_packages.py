"""Package upload: verified against the trusted keys; rejected uploads leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from control_plane.core.blobs import LocalBlobStore
from control_plane.core.errors import InvalidRequest, NotFound
from control_plane.fleet.delta import delta_answers
from control_plane.registry.models import Package
from control_plane.registry.packages.service import PackageService
from model_packager import cdc
from model_packager.archive import sha256_file
from protos.gen import fleet_pb2
from tests.control_plane.conftest import CHUNK_SIZE, ControlPlane, Keys, build_test_package
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def _nothing_stored(cp: ControlPlane) -> None:
    blobs = cp.ctx.blobs
    assert isinstance(blobs, LocalBlobStore)
    assert blobs.digests() == []
    assert list(cp.settings.staging_dir.iterdir()) == []
    with cp.ctx.sessions() as session:
        assert session.query(Package).count() == 0
    assert cp.api.get("/api/v1/packages").json() == []


def _tampered(path: Path, out: Path) -> Path:
    """Same archive with one byte of the model artifact flipped (manifest and signature intact)."""
    with tarfile.open(path) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.startswith("artifacts/"):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            dst.addfile(m, io.BytesIO(data))
    return out


def test_upload_list_get(control_plane: ControlPlane, package_factory: Any) -> None:
    path = package_factory("1.0.0")
    r = control_plane.upload(path)
    assert r.status_code == 201, r.text
    body = r.json()
    digest = sha256_file(path)
    size = path.stat().st_size
    assert body["digest"] == digest
    assert (body["name"], body["version"], body["size"]) == ("tiny", "1.0.0", size)
    assert body["chunk_size"] == CHUNK_SIZE
    assert body["chunk_count"] == -(-size // CHUNK_SIZE) > 2
    assert body["manifest"]["variants"][0]["runtime"] == "onnx"
    assert control_plane.ctx.blobs.exists(digest)
    assert control_plane.ctx.blobs.read_range(digest, 0, size) == path.read_bytes()

    again = control_plane.upload(path)
    assert again.status_code == 200 and again.json()["digest"] == digest
    listed = control_plane.api.get("/api/v1/packages").json()
    assert [p["digest"] for p in listed] == [digest]
    assert control_plane.api.get(f"/api/v1/packages/{digest}").json()["version"] == "1.0.0"
    assert control_plane.api.get(f"/api/v1/packages/{'0' * 64}").status_code == 404
    assert list(control_plane.settings.staging_dir.iterdir()) == []


def test_tampered_package_rejected(
    control_plane: ControlPlane, package_factory: Any, tmp_path: Path
) -> None:
    bad = _tampered(package_factory("1.0.0"), tmp_path / "bad.edgepkg")
    r = control_plane.upload(bad)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "PackageRejected"
    assert "sha256" in r.json()["detail"]
    _nothing_stored(control_plane)


def test_unknown_key_rejected(
    control_plane: ControlPlane, package_factory: Any, untrusted_keys: Keys
) -> None:
    r = control_plane.upload(package_factory("1.0.0", keys=untrusted_keys))
    assert r.status_code == 422
    assert "not trusted" in r.json()["detail"]
    _nothing_stored(control_plane)


def test_garbage_and_empty_rejected(control_plane: ControlPlane, tmp_path: Path) -> None:
    junk = tmp_path / "junk.edgepkg"
    junk.write_bytes(b"not a tar archive" * 100)
    assert control_plane.upload(junk).status_code == 422
    empty = tmp_path / "empty.edgepkg"
    empty.write_bytes(b"")
    assert control_plane.upload(empty).status_code == 422
    _nothing_stored(control_plane)


def test_same_name_version_different_content_conflicts(
    control_plane: ControlPlane, onnx_model: Path, trusted_keys: Keys, tmp_path: Path
) -> None:
    first = build_test_package(onnx_model, tmp_path / "a", trusted_keys, "2.0.0", "tiny")
    assert control_plane.upload(first).status_code == 201
    second = build_test_package(
        onnx_model, tmp_path / "b", trusted_keys, "2.0.0", "tiny", description="rebuilt"
    )
    assert sha256_file(second) != sha256_file(first)
    r = control_plane.upload(second)
    assert r.status_code == 409, r.text
    assert control_plane.ctx.blobs.exists(sha256_file(first))
    assert not control_plane.ctx.blobs.exists(sha256_file(second))


def test_upload_limit(control_plane: ControlPlane, package_factory: Any) -> None:
    control_plane.ctx.settings.storage.max_upload_bytes = 1000
    r = control_plane.upload(package_factory("1.0.0"))
    assert r.status_code == 413
    _nothing_stored(control_plane)


def test_chunk_index_stored_and_chunks_served_by_digest(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    """Delta updates: the upload stores the package's chunk index; chunks are read by digest."""
    path = package_factory("1.0.0")
    digest = control_plane.upload(path).json()["digest"]
    expected = cdc.chunk_file(path)
    data = path.read_bytes()
    with control_plane.ctx.sessions() as session:
        packages = PackageService(session, control_plane.ctx)
        encoded, index = packages.chunk_index(digest)
        assert encoded == expected.encode() and index == expected
        assert packages.get(digest).cdc_index_sha256 == hashlib.sha256(encoded).digest()
        last = index.count - 1
        [chunk] = packages.read_cdc_chunks(digest, [index.digests[last]])
        at = index.offsets[last]
        assert (chunk.index, chunk.data) == (last, data[at : at + index.sizes[last]])
        with pytest.raises(NotFound, match="no chunk"):
            packages.read_cdc_chunks(digest, [b"\0" * 32])
        payloads = delta_answers(
            packages, digest, "r1", want_index=True, digests=[index.digests[0]] * 2
        )
        first, second = (fleet_pb2.ChunkData.FromString(p) for p in payloads)
        assert first.cdc_index == encoded and first.request_id == "r1"
        assert second.cdc and second.sha256 == index.digests[0] and len(payloads) == 2  # once
        with pytest.raises(InvalidRequest, match="at most 64"):
            delta_answers(
                packages,
                digest,
                "r2",
                want_index=False,
                digests=[bytes([i]) * 32 for i in range(65)],
            )
        with pytest.raises(InvalidRequest, match="32-byte"):
            delta_answers(packages, digest, "r3", want_index=False, digests=[b"short"])
