"""Server-rendered pages without a browser: sign-in redirects, 403 pages, every page rendering
what the services hold, and the sample grid's paging and filters."""

from __future__ import annotations

import random
import re

from tests.dashboard.conftest import ADMIN_PASSWORD, API, Plane, sign_in
from tests.datasets.digits import digit_png


def _dataset(plane: Plane, n: int) -> str:
    admin = plane.admin
    spec = {"name": "digits", "type": "image_classification", "labels": ["0", "1", "2"]}
    ds = str(admin.post(f"{API}/datasets", json=spec).json()["id"])
    files = [
        ("files", (f"{i}.png", digit_png(i % 3, random.Random(i)), "image/png")) for i in range(n)
    ]
    assert admin.post(f"{API}/datasets/{ds}/files", files=files).json()["imported"] == n
    return ds


def test_pages_send_visitors_to_sign_in_and_back(plane: Plane) -> None:
    c = plane.client()
    r = c.get("/ui/datasets?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/datasets%3Fx%3D1"
    assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
    # An API token is not a page credential: pages use the session cookie only.
    assert plane.admin.get("/ui/", follow_redirects=False).status_code == 303
    sign_in(c, "admin", ADMIN_PASSWORD)
    r = c.get("/ui/")
    assert r.status_code == 200 and "Overview" in r.text


def test_pages_refuse_roles_with_403_and_hide_what_the_role_cannot_do(plane: Plane) -> None:
    plane.user("lena", "labeller", password="password-lena")
    c = plane.client()
    sign_in(c, "lena", "password-lena")
    r = c.get("/ui/users")
    assert r.status_code == 403 and "needs admin" in r.text
    page = c.get("/ui/deployments").text
    # The deploy button is there but disabled, saying which role it needs.
    assert re.search(r'<button type="submit" disabled title="needs the engineer role">Deploy', page)
    assert 'href="/ui/users"' not in page


def test_every_page_renders_through_the_services(plane: Plane) -> None:
    ds = _dataset(plane, 12)
    c = plane.client()
    sign_in(c, "admin", ADMIN_PASSWORD)
    ids = [s["id"] for s in plane.admin.get(f"{API}/datasets/{ds}/samples").json()["items"]]
    for sid in ids[:5]:
        r = plane.admin.put(
            f"{API}/datasets/{ds}/samples/{sid}/annotations", json={"annotations": [{"label": "1"}]}
        )
        assert r.status_code == 200
    assert plane.admin.post(f"{API}/datasets/{ds}/versions", json={}).status_code == 201
    for url in (
        "/ui/",
        "/ui/datasets",
        f"/ui/datasets/{ds}",
        f"/ui/datasets/{ds}/samples",
        f"/ui/datasets/{ds}/label",
        "/ui/training",
        "/ui/models",
        "/ui/devices",
        "/ui/deployments",
        "/ui/users",
        "/ui/account",
    ):
        r = c.get(url)
        assert r.status_code == 200, (url, r.text[:300])
        assert 'name="csrf-token" content="' in r.text
    detail = c.get(f"/ui/datasets/{ds}").text
    assert 'data-version="V001"' in detail
    assert 'data-label="1" data-value="5"' in detail  # the label statistics chart
    unknown = c.get("/ui/datasets/nope")
    assert unknown.status_code == 404 and "not found" in unknown.text


def test_sample_grid_pages_and_filters(plane: Plane) -> None:
    ds = _dataset(plane, 9)
    ids = [s["id"] for s in plane.admin.get(f"{API}/datasets/{ds}/samples").json()["items"]]
    plane.admin.post(
        f"{API}/datasets/{ds}/annotations/bulk",
        json={"sample_ids": ids[:4], "op": "set", "label": "2"},
    )
    c = plane.client()
    sign_in(c, "admin", ADMIN_PASSWORD)

    def grid(query: str) -> list[int]:
        text = c.get(f"/ui/datasets/{ds}/samples?{query}").text
        return [int(x) for x in re.findall(r'<li data-sample="(\d+)"', text)]

    assert grid("limit=50&offset=5") == ids[5:]
    assert grid("limit=50&label=2") == ids[:4]
    assert grid("limit=50&unlabeled=true") == ids[4:]
    text = c.get(f"/ui/datasets/{ds}/samples?limit=50&offset=0&unlabeled=true").text
    assert "1\N{EN DASH}5 of 5" in text
    # The labelling page walks the same filtered listing.
    page = c.get(f"/ui/datasets/{ds}/label?unlabeled=true&i=0").text
    assert f'data-sample="{ids[4]}"' in page
    empty = c.get(f"/ui/datasets/{ds}/label?label=2&i=9").text
    assert empty.count("No sample matches") == 1


def test_overview_lists_recent_failures(plane: Plane) -> None:
    # A job that failed, as the training runner records one (rows are the service's to write;
    # running a job to failure is the training tests' business).
    from control_plane.training.models import TrainingJob

    with plane.ctx.sessions() as session:
        session.add(
            TrainingJob(
                id="j-failed",
                name="broken",
                version=2,
                algorithm="script",
                framework="tensorflow",
                hyperparameters={},
                timeout_s=60,
                state="failed",
                failure_reason="exit code 3: ValueError: bad input shape",
            )
        )
        session.commit()
    c = plane.client()
    sign_in(c, "admin", ADMIN_PASSWORD)
    page = c.get("/ui/").text
    assert '<a href="/ui/training/j-failed">broken</a>' in page
    assert "bad input shape" in page


def test_device_labels_are_edited_through_the_api(plane: Plane) -> None:
    r = plane.admin.post(f"{API}/devices", json={"device_id": "gw-9", "labels": {"site": "a"}})
    assert r.status_code == 201, r.text
    labeller = plane.user("lena", "labeller")
    assert labeller.patch(f"{API}/devices/gw-9", json={"labels": {}}).status_code == 403
    assert plane.admin.patch(f"{API}/devices/gw-9", json={"labels": "x"}).status_code == 422
    r = plane.admin.patch(f"{API}/devices/gw-9", json={"labels": {"site": "b", "floor": "2"}})
    assert r.status_code == 200 and r.json()["labels"] == {"site": "b", "floor": "2"}
    assert [d["id"] for d in plane.admin.get(f"{API}/devices?label=site=b").json()] == ["gw-9"]
    c = plane.client()
    sign_in(c, "admin", ADMIN_PASSWORD)
    page = c.get("/ui/devices/gw-9").text
    assert 'value="site=b, floor=2"' in page
