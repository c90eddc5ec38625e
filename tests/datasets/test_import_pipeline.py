"""The import pipeline's lean paths keep the bad-input guarantees.

Imports read files with one ``open`` + ``fstat`` (no separate ``lstat``), write objects with bare
system calls and insert plain rows instead of ORM objects. These tests pin what that must not
lose: links and special files are never read, a file swapped for a link after the folder walk is
still refused, and an import that fails half-way leaves no rows, labels or objects behind (but
never removes an object another dataset already had).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from control_plane.core.errors import InvalidRequest, PayloadTooLarge
from control_plane.datasets.sources import FolderSource
from control_plane.datasets.storage import DatasetStore
from tests.datasets.conftest import API, API_TOKEN, Client, digit_png
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def _png(seed: int) -> bytes:
    return digit_png(seed % 10, random.Random(seed))


def _objects(client: Client) -> set[str]:
    root = client.ctx.settings.resolved_dataset_dir / "objects"
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_folder_read_refuses_links_fifos_and_growth(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.png").write_bytes(b"x" * 100)
    (root / "a" / "swapped.png").write_bytes(b"y" * 100)
    (root / "big.png").write_bytes(b"z" * 100)
    (tmp_path / "outside.png").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.png", root / "a" / "link.png")
    os.mkfifo(root / "pipe.png")
    src = FolderSource(root, max_file_bytes=150)
    assert src.names() == ["a/ok.png", "a/swapped.png", "big.png"]  # no link, no FIFO

    assert src.read("a/ok.png") == b"x" * 100
    # Swapped for a link after the walk: refused by the open itself.
    (root / "a" / "swapped.png").unlink()
    os.symlink(tmp_path / "outside.png", root / "a" / "swapped.png")
    for name in ("a/swapped.png", "a/link.png", "pipe.png"):  # a FIFO must not block the open
        with pytest.raises(InvalidRequest, match="not a regular file"):
            src.read(name)
    (root / "big.png").write_bytes(b"z" * 151)  # grew past the limit after the walk
    with pytest.raises(PayloadTooLarge):
        src.read("big.png")
    with pytest.raises(InvalidRequest, match=r"'\.\.' in path"):
        src.read("../outside.png")
    with pytest.raises(InvalidRequest, match="file not found"):
        src.read("a/missing.png")


def test_folder_read_refuses_paths_through_a_linked_folder(tmp_path: Path) -> None:
    """A name from an annotation file that passes through a symlinked folder is refused."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x" * 10)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    os.symlink(outside, root / "linked")
    src = FolderSource(root, max_file_bytes=100)
    with pytest.raises(InvalidRequest, match="not a regular file"):
        src.read("linked/secret.png")
    assert src.read("ok.png") == b"x" * 10


def test_store_put_bytes(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    digest = "ab" + "0" * 62
    assert store.put_bytes(digest, b"data") is True
    assert store.put_bytes(digest, b"data") is False
    assert store.read(digest) == b"data"
    assert [p.name for p in store.object_path(digest).parent.iterdir()] == [digest]  # no temp
    assert store.put_bytes("cd" + "1" * 62, b"") is True  # empty file, new folder


def test_failed_import_leaves_nothing_behind(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = _png(1)
    other = client.create("other")
    files = [("files", ("shared.png", shared, "image/png"))]
    assert client.api.post(f"{API}/datasets/{other}/files", files=files).json()["imported"] == 1

    folder = tmp_path / "in"
    for i, data in enumerate([shared, _png(2), _png(3), _png(4)]):
        (folder / "fresh").mkdir(parents=True, exist_ok=True)
        (folder / "fresh" / f"{i}.png").write_bytes(data)
    ds = client.create("target")
    before = _objects(client)

    calls = 0
    real = DatasetStore.put_bytes

    def failing(self: DatasetStore, digest: str, data: bytes) -> bool:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise OSError(28, "No space left on device")
        return real(self, digest, data)

    monkeypatch.setattr(DatasetStore, "put_bytes", failing)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    api = TestClient(client.api.app, headers=auth, raise_server_exceptions=False)
    r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(folder)})
    assert r.status_code == 500
    assert calls == 4
    d = client.api.get(f"{API}/datasets/{ds}").json()
    assert (d["sample_count"], d["labels"]) == (0, [])
    assert _objects(client) == before  # the shared object stays, the new ones are gone
    assert client.api.get(f"{API}/datasets/{other}").json()["sample_count"] == 1

    monkeypatch.setattr(DatasetStore, "put_bytes", real)
    r = client.import_folder(ds, folder)
    assert r.status_code == 200 and r.json()["imported"] == 4, r.text
    assert r.json()["labels_added"] == ["fresh"]
