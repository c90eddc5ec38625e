"""The S3 blob store against a real S3-compatible server on loopback (tests/s3.py): multipart
uploads, range reads, streamed reads checked against the digest, clear errors, and package
uploads through the API landing in the bucket."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from control_plane.core.blobs import S3BlobStore, make_blob_store
from control_plane.core.context import AppContext
from control_plane.core.errors import StorageUnavailable
from control_plane.core.s3 import ChecksumMismatch, S3Location
from control_plane.registry.packages.service import PackageService
from tests.control_plane.conftest import API_TOKEN, Keys, make_settings
from tests.datasets.conftest import brokerless_app
from tests.s3 import S3Server


def _store(s3_server: S3Server, tmp_path: Path, trusted: Keys, bucket: str) -> S3BlobStore:
    settings = make_settings(tmp_path, trusted, **s3_server.settings(bucket))
    store = make_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    return store


def _file(path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_large_blob_goes_up_in_parts_and_reads_back_checked(
    s3_server: S3Server, tmp_path: Path, trusted_keys: Keys
) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, tmp_path, trusted_keys, bucket)
    source, digest = _file(tmp_path / "big.bin", (12 << 20) + 5)
    original = source.read_bytes()
    store.put(digest, source)
    assert not source.exists()  # consumed, as the local store's rename does

    head = s3_server.client().head_object(Bucket=bucket, Key=f"cp/blobs/{digest[:2]}/{digest}")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts
    assert head["Metadata"]["sha256"] == digest
    assert store.exists(digest) and store.size(digest) == len(original)
    assert store.read_range(digest, 5 << 20, 100) == original[5 << 20 : (5 << 20) + 100]
    assert store.read_range(digest, len(original) - 3, 10) == original[-3:]
    assert store.read_range(digest, len(original), 10) == b""
    assert b"".join(store.stream(digest)) == original
    assert store.digests() == [digest]

    store.delete(digest)
    assert not store.exists(digest) and store.digests() == []


def test_a_changed_object_is_refused_on_read(
    s3_server: S3Server, tmp_path: Path, trusted_keys: Keys
) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, tmp_path, trusted_keys, bucket)
    source, digest = _file(tmp_path / "small.bin", 3000)
    store.put(digest, source)
    # Someone rewrites the object behind the control plane's back.
    s3_server.client().put_object(
        Bucket=bucket, Key=f"cp/blobs/{digest[:2]}/{digest}", Body=b"x" * 3000
    )
    with pytest.raises(ChecksumMismatch, match="is not the stored"):
        b"".join(store.stream(digest))


def test_bad_storage_settings_fail_clearly(
    s3_server: S3Server, tmp_path: Path, trusted_keys: Keys
) -> None:
    with pytest.raises(ValidationError, match=r"not an s3://bucket\[/prefix\] URL"):
        make_settings(tmp_path, trusted_keys, storage_url="https://example.com/bucket")
    assert S3Location.parse("s3://b/x/y/").prefix == "x/y/"
    assert S3Location.parse("s3://b").prefix == ""
    missing = make_settings(tmp_path, trusted_keys, **s3_server.settings("no-such-bucket"))
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        AppContext.from_settings(missing)


def test_package_upload_lands_in_the_bucket(
    s3_server: S3Server, tmp_path: Path, trusted_keys: Keys, package_factory: Any
) -> None:
    bucket = s3_server.new_bucket()
    settings = make_settings(tmp_path, trusted_keys, **s3_server.settings(bucket, "plane"))
    app, ctx = brokerless_app(settings)  # no broker: the upload and chunk reads need none
    path = package_factory("1.0.0")
    try:
        api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
        with open(path, "rb") as f:
            r = api.post("/api/v1/packages", files={"file": (path.name, f)})
        assert r.status_code == 201, r.text
        digest = r.json()["digest"]
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == [f"plane/blobs/{digest[:2]}/{digest}"]
        assert not settings.resolved_blob_dir.exists()  # nothing went to the local folder
        with ctx.sessions() as session:
            chunks = PackageService(session, ctx).read_chunks(digest, [0, 1])
        data = path.read_bytes()
        size = settings.mqtt.chunk_size
        assert [c.data for c in chunks] == [data[:size], data[size : 2 * size]]
    finally:
        ctx.close()
