"""Notebooks pages over a real JupyterLab: created from an example on a dataset version, listed,
opened through the proxy with the dashboard session, exported to training code, stopped and
started from the page's forms (which call the REST API with the session's CSRF token)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.dashboard.conftest import ADMIN_PASSWORD, API, Plane, csrf_of, sign_in
from tests.dashboard.test_pages import _dataset


def _wait_state(api: TestClient, nb_id: str, state: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (got := api.get(f"{API}/notebooks/{nb_id}").json())["state"] != state:
        assert got["state"] != "failed", got["reason"]
        assert time.monotonic() < deadline, f"notebook did not reach {state}"
        time.sleep(0.5)


@pytest.fixture
def browser(plane: Plane) -> Iterator[TestClient]:
    """A signed-in admin's browser session; every notebook it leaves is deleted afterwards."""
    c = plane.client()
    sign_in(c, "admin", ADMIN_PASSWORD)
    try:
        yield c
    finally:
        for nb in plane.admin.get(f"{API}/notebooks").json():
            plane.admin.delete(f"{API}/notebooks/{nb['id']}")
        servers = getattr(plane.app.state, "notebooks", None)
        if servers is not None:
            servers.close()


def test_notebook_pages_create_open_export_stop_start(plane: Plane, browser: TestClient) -> None:
    ds = _dataset(plane, 6)
    for i, sample in enumerate(plane.admin.get(f"{API}/datasets/{ds}/samples").json()["items"]):
        ann = {"annotations": [{"label": str(i % 3)}]}
        r = plane.admin.put(f"{API}/datasets/{ds}/samples/{sample['id']}/annotations", json=ann)
        assert r.status_code == 200, r.text
    assert plane.admin.post(f"{API}/datasets/{ds}/versions", json={}).status_code == 201
    listing = browser.get("/ui/notebooks").text
    assert f'<option value="{ds}|V001">' in listing
    assert '<option value="digits_image_classification">' in listing
    csrf = {"X-CSRF-Token": csrf_of(browser)}
    # What the create form sends (dataset split into dataset_id + dataset_version).
    body = {
        "name": "dev",
        "dataset_id": ds,
        "dataset_version": "V001",
        "example": "digits_image_classification",
    }
    r = browser.post(f"{API}/notebooks", json=body, headers=csrf)
    assert r.status_code == 201, r.text
    nb = r.json()["id"]
    _wait_state(plane.admin, nb, "running")

    assert 'data-notebook="dev"' in browser.get("/ui/notebooks").text
    page = browser.get(f"/ui/notebooks/{nb}").text
    assert f'<a href="/notebooks/{nb}/lab" id="open-lab">' in page
    assert "<option>digits_image_classification.ipynb</option>" in page
    assert "<code>DATA_URL</code>" in page
    # The link opens JupyterLab through the proxy with the dashboard session alone.
    lab = browser.get(f"/notebooks/{nb}/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert plane.client().get(f"/notebooks/{nb}/lab").status_code == 401

    # Export (the form's request) gives training code.
    r = browser.post(
        f"{API}/notebooks/{nb}/export",
        json={"path": "digits_image_classification.ipynb"},
        headers=csrf,
    )
    assert r.status_code == 201, r.text
    assert r.json()["code_id"]

    # Stop: the page offers Start instead of the link; Start brings it back.
    assert browser.post(f"{API}/notebooks/{nb}/stop", headers=csrf).status_code == 200
    page = browser.get(f"/ui/notebooks/{nb}").text
    assert 'id="start-notebook"' in page and 'id="open-lab"' not in page
    assert browser.post(f"{API}/notebooks/{nb}/start", headers=csrf).status_code == 200
    _wait_state(plane.admin, nb, "running")
    assert 'id="stop-notebook"' in browser.get(f"/ui/notebooks/{nb}").text

    # A viewer sees the page but no link (the proxy needs an engineer).
    plane.user("vic", "viewer", password="password-vic")
    viewer = plane.client()
    sign_in(viewer, "vic", "password-vic")
    page = viewer.get(f"/ui/notebooks/{nb}").text
    assert "needs the engineer role" in page and 'id="open-lab"' not in page
    assert browser.get("/ui/notebooks/nope").status_code == 404
