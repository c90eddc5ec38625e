"""Dataset files and published versions in an S3-compatible store (tests/s3.py): the bucket holds
the samples once and each version as a manifest naming them, and another node (its own local
folders, the same database and bucket) materialises the identical version from the bucket."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from control_plane.datasets.storage import DatasetStore
from control_plane.datasets.versions.service import VersionService
from tests.datasets.conftest import (
    API,
    API_TOKEN,
    Client,
    brokerless_app,
    digit_png,
    make_settings,
)
from tests.s3 import S3Server


def _bucket_names(s3_server: S3Server, bucket: str) -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def test_versions_are_manifests_in_the_bucket_and_materialise_anywhere(
    s3_server: S3Server, tmp_path: Path, digits_dir: Path
) -> None:
    bucket = s3_server.new_bucket()
    storage = s3_server.settings(bucket, "plane")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    roots = [digits_dir.parent]
    first = make_settings(tmp_path / "a", database_url=db, dataset_import_roots=roots, **storage)
    app, ctx = brokerless_app(first)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    client = Client(api, ctx, tmp_path)
    try:
        ds = client.create("digits")
        r = client.import_folder(ds, digits_dir)
        assert r.status_code == 200 and r.json()["imported"] == 300, r.text
        v = client.publish(ds, ratio=0.8, seed=4)
    finally:
        ctx.close()

    names = _bucket_names(s3_server, bucket)
    objects = [n for n in names if n.startswith("plane/datasets/objects/")]
    version = [n for n in names if n.startswith(f"plane/datasets/versions/{ds}/V001/")]
    assert len(objects) == 300  # each sample once
    assert sorted(n.rsplit("/", 1)[-1] for n in version) == ["manifest.jsonl", "version.json"]
    manifest = s3_server.client().get_object(Bucket=bucket, Key=version[0])["Body"].read()
    assert hashlib.sha256(manifest).hexdigest() == v["digest"]
    named = {json.loads(line)["sha256"] for line in manifest.splitlines()}
    assert {f"plane/datasets/objects/{d[:2]}/{d}" for d in named} == set(objects)

    # A second node: its own (empty) local folders, the same database and bucket.
    second = make_settings(tmp_path / "b", database_url=db, dataset_import_roots=roots, **storage)
    app2, ctx2 = brokerless_app(second)
    try:
        with ctx2.sessions() as session:
            versions = VersionService(session, ctx2)
            folder = versions.path(versions.get(ds, "V001"))
        assert folder.is_relative_to(second.resolved_dataset_dir)
        assert hashlib.sha256((folder / "manifest.jsonl").read_bytes()).hexdigest() == v["digest"]
        files = sorted((folder / "data").iterdir())
        assert len(files) == 300
        for f in files:  # every file is the object its name says
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.stem
        api2 = TestClient(app2, headers={"Authorization": f"Bearer {API_TOKEN}"})
        got = api2.get(f"{API}/datasets/{ds}/versions/V001").json()
        assert got["data_url"] == str(folder.resolve())

        # Delete the version: gone from the bucket and from this node's folder.
        assert api2.delete(f"{API}/datasets/{ds}/versions/V001").status_code == 204
        left = [n for n in _bucket_names(s3_server, bucket) if "/versions/" in n]
        assert left == [] and not folder.exists()
    finally:
        ctx2.close()


def test_failed_import_removes_its_objects_but_not_another_nodes(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node b's import fails part-way: the objects it uploaded go, the one node a had already
    stored (and b found in the bucket) stays."""
    bucket = s3_server.new_bucket()
    storage = s3_server.settings(bucket, "plane")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    rng = random.Random(9)
    shared = digit_png(1, rng)
    folder = tmp_path / "in" / "fresh"
    folder.mkdir(parents=True)
    for i, data in enumerate([shared, *(digit_png(d, rng) for d in (2, 3, 4))]):
        (folder / f"{i}.png").write_bytes(data)

    nodes = []
    for name in ("a", "b"):
        settings = make_settings(
            tmp_path / name, database_url=db, dataset_import_roots=[tmp_path / "in"], **storage
        )
        app, ctx = brokerless_app(settings)
        api = TestClient(
            app, headers={"Authorization": f"Bearer {API_TOKEN}"}, raise_server_exceptions=False
        )
        nodes.append((api, ctx))
    (a, ctx_a), (b, ctx_b) = nodes
    try:
        other = Client(a, ctx_a, tmp_path).create("other")
        files = [("files", ("shared.png", shared, "image/png"))]
        assert a.post(f"{API}/datasets/{other}/files", files=files).json()["imported"] == 1
        before = _bucket_names(s3_server, bucket)
        assert len(before) == 1

        calls = 0
        real = DatasetStore.put_bytes

        def failing(self: DatasetStore, digest: str, data: bytes) -> bool:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise OSError(28, "No space left on device")
            return real(self, digest, data)

        monkeypatch.setattr(DatasetStore, "put_bytes", failing)
        target = Client(b, ctx_b, tmp_path).create("target")
        r = b.post(f"{API}/datasets/{target}/imports", json={"path": str(folder)})
        assert r.status_code == 500 and calls == 4
        assert _bucket_names(s3_server, bucket) == before  # the shared object is still there
        assert b.get(f"{API}/datasets/{target}/samples").json()["total"] == 0
    finally:
        ctx_a.close()
        ctx_b.close()
