"""Label set management (rename, merge, delete with annotations) and version protection."""

from __future__ import annotations

import random
from pathlib import Path

from control_plane.datasets.versions.service import VersionService, split_samples
from tests.datasets.conftest import API, Client, digit_png
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def _dataset(client: Client, labels: list[str], multi: bool = False) -> tuple[str, list[int]]:
    ds = client.create("lbl", labels=labels, multi_label=multi)
    rng = random.Random(5)
    files = [("files", (f"{i}.png", digit_png(i % 10, rng), "image/png")) for i in range(12)]
    assert client.api.post(f"{API}/datasets/{ds}/files", files=files).json()["imported"] == 12
    return ds, [s["id"] for s in client.samples(ds)]


def _bulk(client: Client, ds: str, ids: list[int], op: str, label: str | None = None) -> None:
    r = client.api.post(
        f"{API}/datasets/{ds}/annotations/bulk",
        json={"sample_ids": ids, "op": op, "label": label},
    )
    assert r.status_code == 200, r.text


def _counts(client: Client, ds: str) -> dict[str, int]:
    stats = client.api.get(f"{API}/datasets/{ds}/stats").json()
    return {s["name"]: s["samples"] for s in stats["labels"]}


def test_rename_merge_delete(client: Client) -> None:
    ds, ids = _dataset(client, ["cat", "dog", "kitty"], multi=True)
    _bulk(client, ds, ids[:6], "set", "cat")
    _bulk(client, ds, ids[4:9], "add", "kitty")
    _bulk(client, ds, ids[9:], "set", "dog")
    assert _counts(client, ds) == {"cat": 6, "dog": 3, "kitty": 5}

    r = client.api.patch(f"{API}/datasets/{ds}/labels/dog", json={"name": "puppy"})
    assert r.status_code == 200 and r.json()["labels"] == ["cat", "kitty", "puppy"]
    r = client.api.patch(f"{API}/datasets/{ds}/labels/puppy", json={"name": "cat"})
    assert r.status_code == 409 and "merge" in r.json()["detail"]
    assert len(client.samples(ds, label="puppy")) == 3

    # Merge: samples 4 and 5 carried both; they keep one "cat".
    r = client.api.post(f"{API}/datasets/{ds}/labels/kitty/merge", json={"into": "cat"})
    assert r.status_code == 200 and r.json()["labels"] == ["cat", "puppy"]
    stats = client.api.get(f"{API}/datasets/{ds}/stats").json()
    cat = next(s for s in stats["labels"] if s["name"] == "cat")
    assert (cat["samples"], cat["annotations"]) == (9, 9)

    r = client.api.delete(f"{API}/datasets/{ds}/labels/puppy")
    assert r.status_code == 200 and r.json()["labels"] == ["cat"]
    assert len(client.samples(ds, unlabeled=True)) == 3
    _bulk(client, ds, ids[:2], "remove", "cat")
    _bulk(client, ds, ids[2:3], "clear")
    assert len(client.samples(ds, unlabeled=True)) == 6
    r = client.api.post(
        f"{API}/datasets/{ds}/annotations/bulk",
        json={"sample_ids": [ids[0], 999_999], "op": "set", "label": "cat"},
    )
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    assert len(client.samples(ds, unlabeled=True)) == 6


def test_version_in_use_cannot_be_deleted(client: Client) -> None:
    ds, ids = _dataset(client, ["a", "b"])
    _bulk(client, ds, ids[:6], "set", "a")
    _bulk(client, ds, ids[6:], "set", "b")
    v = client.publish(ds, ratio=0.5, seed=1)
    with client.ctx.sessions() as session:
        VersionService(session, client.ctx).add_use(ds, "V001", "training_job", "job-42")
    got = client.api.get(f"{API}/datasets/{ds}/versions/V001").json()
    assert [(u["kind"], u["ref"]) for u in got["used_by"]] == [("training_job", "job-42")]
    r = client.api.delete(f"{API}/datasets/{ds}/versions/V001")
    assert r.status_code == 409 and "job-42" in r.json()["detail"]
    r = client.api.delete(f"{API}/datasets/{ds}")
    assert r.status_code == 409
    assert Path(v["data_url"], "manifest.jsonl").exists()

    with client.ctx.sessions() as session:
        VersionService(session, client.ctx).remove_use(ds, "V001", "training_job", "job-42")
    assert client.api.delete(f"{API}/datasets/{ds}/versions/V001").status_code == 204
    assert not Path(v["data_url"]).exists()
    assert client.api.delete(f"{API}/datasets/{ds}").status_code == 204
    objects = client.ctx.settings.resolved_dataset_dir / "objects"
    assert not any(p.is_file() for p in objects.rglob("*"))


def test_split_is_exact_stratified_and_stable() -> None:
    keyed = [(f"{i:064x}", "abc"[i % 3] if i < 90 else "rare") for i in range(97)]
    a = split_samples(keyed, 0.8, seed=3)
    assert a == split_samples(list(reversed(keyed)), 0.8, seed=3)  # input order is irrelevant
    assert sum(v == "train" for v in a.values()) == round(0.8 * 97)
    for stratum in ("a", "b", "c"):
        train = sum(1 for d, s in keyed if s == stratum and a[d] == "train")
        assert train == 24
    assert split_samples(keyed, 0.8, seed=4) != a
    assert set(split_samples(keyed, 1.0, seed=0).values()) == {"train"}
    assert set(split_samples(keyed, 0.0, seed=0).values()) == {"validation"}
