"""Dataset files and published versions in an S3-compatible store (tests/s3.py): the bucket holds
the samples once and each version as a manifest naming them, and another node (its own local
folders, the same database and bucket) materialises the identical version from the bucket."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient

from control_plane.datasets.versions.service import VersionService
from tests.datasets.conftest import API, API_TOKEN, Client, brokerless_app, make_settings
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
