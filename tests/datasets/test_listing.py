"""The sample listing: same documents as the single-sample route, filters, paging, query count.

The listing builds its JSON from plain rows rather than through ``SamplePublic`` (it is the
hottest read of labeling), so these tests hold it to the model: every listed item must equal
``GET /samples/{id}`` (built from the ORM through the model) and validate as ``SamplePage``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from control_plane.datasets.schemas import SamplePage
from tests.datasets.conftest import API, Client, write_detection
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


@contextmanager
def _statements(client: Client) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(client.ctx.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(client.ctx.engine, "before_cursor_execute", count)


def _page(client: Client, ds: str, **params: Any) -> dict[str, Any]:
    r = client.api.get(f"{API}/datasets/{ds}/samples", params=params)
    assert r.status_code == 200, r.text
    SamplePage.model_validate(r.json())
    return dict(r.json())


def test_listed_samples_equal_single_sample_documents(client: Client, tmp_path: Path) -> None:
    """Detection samples with several boxes (one sample may carry a label twice), a fixed split
    and a model annotation: the page's items are the single-sample documents, field for field."""
    images = write_detection(tmp_path / "det", 12)
    ds = client.create("det", type="object_detection")
    assert client.import_folder(ds, tmp_path / "det", "coco").json()["imported"] == 12
    items = _page(client, ds, limit=1000)["items"]
    sid = items[0]["id"]
    r = client.api.put(
        f"{API}/datasets/{ds}/samples/{sid}/annotations",
        json={
            "annotations": [
                {"label": "bar", "box": {"x": 1, "y": 2, "w": 3, "h": 4}},
                {
                    "label": "bar",
                    "box": {"x": 5.5, "y": 6, "w": 7, "h": 8},
                    "source": "model",
                    "creator": "det:2",
                    "confidence": 0.25,
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    client.api.put(f"{API}/datasets/{ds}/samples/{sid}/split", json={"split": "validation"})

    page = _page(client, ds, limit=1000)
    assert page["total"] == 12 and [s["id"] for s in page["items"]] == sorted(
        s["id"] for s in items
    )
    for item in page["items"]:
        single = client.api.get(f"{API}/datasets/{ds}/samples/{item['id']}").json()
        assert item == single
    first = page["items"][0]
    assert first["split"] == "validation"
    assert [(a["label"], a["box"], a["source"]) for a in first["annotations"]] == [
        ("bar", {"x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0}, "person"),
        ("bar", {"x": 5.5, "y": 6.0, "w": 7.0, "h": 8.0}, "model"),
    ]
    assert sum(len(s["annotations"]) for s in page["items"]) == 2 + sum(
        len(im.boxes) for im in images[1:]
    )

    # A sample carrying a label twice is listed (and counted) once under that label.
    bars = _page(client, ds, label="bar", limit=1000)
    assert bars["total"] == len(bars["items"]) == len({s["id"] for s in bars["items"]})
    assert sid in {s["id"] for s in bars["items"]}
    assert _page(client, ds, split="validation")["total"] == 1


def test_filters_paging_and_not_found(client: Client, digits_dir: Path) -> None:
    ds = client.create("digits")
    assert client.import_folder(ds, digits_dir).status_code == 200
    ids = [s["id"] for s in client.samples(ds)]
    # Pages tile the id order without gaps or repeats.
    seen: list[int] = []
    for offset in range(0, 300, 70):
        page = _page(client, ds, offset=offset, limit=70)
        assert page["total"] == 300 and (page["offset"], page["limit"]) == (offset, 70)
        seen += [s["id"] for s in page["items"]]
    assert seen == ids == sorted(ids)
    assert _page(client, ds, offset=1000)["items"] == []

    sevens = _page(client, ds, label="7", offset=10, limit=5)
    assert sevens["total"] == 30 and len(sevens["items"]) == 5
    assert all(s["annotations"][0]["label"] == "7" for s in sevens["items"])

    r = client.api.post(
        f"{API}/datasets/{ds}/annotations/bulk", json={"sample_ids": ids[:4], "op": "clear"}
    )
    assert r.status_code == 200, r.text
    unlabeled = _page(client, ds, unlabeled=True)
    assert unlabeled["total"] == 4 and [s["id"] for s in unlabeled["items"]] == ids[:4]
    assert all(s["annotations"] == [] for s in unlabeled["items"])
    assert _page(client, ds, split="train")["total"] == 0

    empty = client.create("empty", labels=["a"])
    assert _page(client, empty) == {"total": 0, "offset": 0, "limit": 100, "items": []}
    assert _page(client, empty, label="a")["total"] == 0
    for params in ({}, {"label": "7"}):
        r = client.api.get(f"{API}/datasets/nope/samples", params=params)
        assert r.status_code == 404 and "dataset nope" in r.json()["detail"]
    r = client.api.get(f"{API}/datasets/{ds}/samples", params={"label": "x"})
    assert r.status_code == 404 and "label 'x'" in r.json()["detail"]


def test_a_page_costs_a_fixed_number_of_queries(client: Client, digits_dir: Path) -> None:
    """No query per sample or per annotation: count, page, annotations (+ the label's id)."""
    ds = client.create("digits")
    assert client.import_folder(ds, digits_dir).status_code == 200
    for params, most in (({"limit": 1}, 3), ({"limit": 300}, 3), ({"label": "3"}, 4)):
        with _statements(client) as seen:
            _page(client, ds, **params)
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) <= most, (params, selects)
