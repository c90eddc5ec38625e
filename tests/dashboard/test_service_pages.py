"""Services pages over a real control plane (lifespan, supervisor, agent replicas): the list
with its create forms, a batch service's page (progress, accuracy, per-class table, confusion
heatmap, paged rows, downloads) and an online service's page (replicas, endpoints, per-version
figures, the try-it form), each showing what the REST API says."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from tests.agent.test_http import POST, PRE, digits_onnx
from tests.dashboard.conftest import (
    ADMIN_PASSWORD,
    API,
    SHARED_TOKEN,
    csrf_of,
    make_settings,
    sign_in,
)
from tests.datasets.digits import digit_png, write_digits
from tests.services.test_online import _wait

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    """(API client with the shared token, signed-in admin browser session)."""
    tmp = tmp_path_factory.mktemp("service-pages")
    settings = make_settings(
        tmp,
        dev_mode=True,
        embedded_broker_port=0,
        dataset_import_roots=[tmp],
        service_telemetry_interval_s=0.5,
    )
    with TestClient(create_app(settings)) as page:
        api = TestClient(page.app, headers={"Authorization": f"Bearer {SHARED_TOKEN}"})
        sign_in(page, "admin", ADMIN_PASSWORD)
        write_digits(tmp / "digits", per_class=3, seed=4)
        r = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
        assert r.status_code == 201, r.text
        ds = r.json()["id"]
        body = {"path": str(tmp / "digits"), "format": "imagefolder"}
        assert api.post(f"{API}/datasets/{ds}/imports", json=body).json()["imported"] == 30
        assert (
            api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.5}).status_code == 201
        )
        with open(digits_onnx(tmp / "digits.onnx"), "rb") as f:
            r = api.post(
                f"{API}/models/import",
                files={"file": ("digits.onnx", f, "application/octet-stream")},
                data={
                    "name": "digits",
                    "labels": json.dumps(LABELS),
                    "preprocessing": json.dumps(PRE),
                    "postprocessing": json.dumps(POST),
                    "targets": json.dumps(["onnx-fp32"]),
                },
            )
        assert r.status_code == 202, r.text
        _wait(
            "conversion",
            lambda: api.get(f"{API}/models/digits/versions/1").json()["state"] == "ready",
        )
        page.dataset_id = ds  # type: ignore[attr-defined]
        yield api, page


def _service(api: TestClient, name: str, done: tuple[str, ...]) -> dict[str, Any]:
    return dict(
        _wait(name, lambda: (s := api.get(f"{API}/services/{name}").json())["state"] in done and s)
    )


def test_batch_service_page_shows_what_the_api_says(plane: tuple[TestClient, TestClient]) -> None:
    api, page = plane
    listing = page.get("/ui/services").text
    # The create forms offer the ready model version and the published dataset version.
    assert 'id="create-online"' in listing and 'id="create-batch"' in listing
    assert '<option value="digits|1">' in listing
    assert f'<option value="{page.dataset_id}|V001">' in listing  # type: ignore[attr-defined]
    spec = {
        "name": "digits-eval",
        "type": "batch",
        "models": [{"model": "digits", "version": "1"}],
        "input": {"dataset_id": page.dataset_id, "dataset_version": "V001"},  # type: ignore[attr-defined]
    }
    assert api.post(f"{API}/services", json=spec).status_code == 201
    svc = _service(api, "digits-eval", ("succeeded", "failed"))
    assert svc["state"] == "succeeded", svc["reason"]
    html = page.get("/ui/services/digits-eval").text
    ev = svc["evaluation"]
    assert f'<strong id="accuracy">{ev["accuracy"]:.4f}</strong>' in html
    assert f"{svc['batch']['done']} of {svc['batch']['total']} done" in html
    assert 'id="confusion"' in html and 'id="per-class"' in html
    assert html.count("<tr", html.index('id="per-class"'), html.index('id="confusion"')) == 1 + len(
        ev["per_class"]
    )
    assert 'href="/api/v1/services/digits-eval/results.csv"' in html
    assert 'href="/api/v1/services/digits-eval/results.jsonl"' in html
    # Rows are paged 50 at a time; the 15 validation rows fit one page, an offset pages on.
    total = api.get(f"{API}/services/digits-eval/results").json()["total"]
    assert f'<span id="results-total">{total}</span>' in html
    second = page.get("/ui/services/digits-eval?offset=10").text
    rows = re.findall(r"<tr class=\"[^\"]*\"><td>(\d+)</td>", second)
    assert [int(i) for i in rows] == list(range(10, total))
    assert 'id="results-prev"' in second and 'id="results-next"' not in second
    listed = page.get("/ui/services").text
    assert 'data-service="digits-eval"' in listed and "succeeded" in listed


def test_online_service_page_shows_replicas_endpoint_and_figures(
    plane: tuple[TestClient, TestClient],
) -> None:
    api, page = plane
    spec = {"name": "digits-online", "models": [{"model": "digits", "version": "1"}]}
    assert api.post(f"{API}/services", json=spec).status_code == 201
    try:
        svc = _service(api, "digits-online", ("running", "failed"))
        assert svc["state"] == "running", svc["reason"]
        html = page.get("/ui/services/digits-online").text
        assert "/api/v1/services/digits-online/v2/models/digits/infer" in html
        for address in svc["grpc_addresses"]:
            assert f'<code class="grpc-address">{address}</code>' in html
        assert 'data-replica="0"' in html
        # The try-it form's request: the image as a multipart upload to the form's URL, with the
        # session cookie and its CSRF token (as dashboard.js sends it); the answer holds top-k.
        action = re.search(r'<form data-upload="([^"]+)" data-topk id="try-it-form">', html)
        assert (
            action and action.group(1) == "/api/v1/services/digits-online/v2/models/{model}/infer"
        )
        # The model is chosen in the form (one option per model of the service).
        assert re.findall(
            r"<select data-url-field=\"model\" id=\"try-it-model\">(.*?)</select>", html
        ) == ["<option>digits</option>"]
        url = action.group(1).replace("{model}", "digits")
        png = digit_png(7, random.Random(3))
        r = page.post(url, files={"file": ("d.png", png, "image/png")})
        assert r.status_code == 403  # no CSRF token: refused
        r = page.post(
            url,
            files={"file": ("d.png", png, "image/png")},
            headers={"X-CSRF-Token": csrf_of(page)},
        )
        assert r.status_code == 200, r.text
        topk = next(o for o in r.json()["outputs"] if o["name"].endswith("_topk"))
        assert len(topk["data"]) == 3
        # The replica reports the request above: the page's version row shows the API's figures.
        figures = _wait(
            "figures",
            lambda: [
                f
                for f in api.get(f"{API}/services/digits-online/versions").json()["items"]
                if f["requests"] >= 1
            ],
        )
        html = page.get("/ui/services/digits-online").text
        row = re.search(r'<tr data-version="1">(.*?)</tr>', html, re.S)
        assert row, html
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        weight = figures[0].get("weight")
        assert cells[:4] == ["digits", "1", "yes", "" if weight is None else str(weight)]
        assert int(cells[4]) >= figures[0]["requests"]
        assert 'data-label="digits 1"' in html  # the requests-by-version chart
        assert page.get("/ui/services/nope").status_code == 404
    finally:
        api.delete(f"{API}/services/digits-online")


def test_batch_page_draws_a_detection_evaluation() -> None:
    """A detection batch's figures (mAP, per-label AP) as the page draws them, from the API's
    own schema objects through the page's template."""
    from control_plane.dashboard.render import templates
    from control_plane.services.schemas import (
        BatchInput,
        BatchProgress,
        DetectionClassMetrics,
        DetectionEvaluation,
        ResultPage,
        ServiceModel,
        ServicePublic,
    )

    now = dt.datetime.now(dt.UTC)
    detection = DetectionEvaluation(
        iou_threshold=0.5,
        images=4,
        errors=0,
        boxes=6,
        detections=5,
        true_positives=4,
        precision=0.8,
        recall=4 / 6,
        mean_ap=0.625,
        labels=["box", "disc"],
        per_class=[
            DetectionClassMetrics(
                label="box",
                support=3,
                detections=3,
                true_positives=3,
                precision=1.0,
                recall=1.0,
                ap=1.0,
            ),
            DetectionClassMetrics(
                label="disc",
                support=3,
                detections=2,
                true_positives=1,
                precision=0.5,
                recall=1 / 3,
                ap=0.25,
            ),
        ],
    )
    svc = ServicePublic(
        name="shapes-eval",
        type="batch",
        state="succeeded",
        reason="",
        models=[ServiceModel(model="shapes", version="1")],
        generation=1,
        replicas=[],
        grpc_addresses=[],
        input=BatchInput(dataset_id="d1", dataset_version="V001"),
        batch=BatchProgress(job_id="j", state="SUCCEEDED", total=4, done=4),
        detection_evaluation=detection,
        created_at=now,
        updated_at=now,
    )
    html = templates.get_template("services_batch.html").render(
        svc=svc,
        live=False,
        percent=100.0,
        confusion=None,
        results=ResultPage(total=0, offset=0, items=[]),
        per_page=50,
        can=lambda role: True,
        user=None,
        csrf="",
    )
    assert '<strong id="map">0.6250</strong>' in html
    row = "<td>disc</td><td>3</td><td>2</td><td>1</td><td>0.500</td><td>0.333</td><td>0.250</td>"
    assert row in html.replace("\n", "")
    assert 'id="evaluation"' not in html  # no classification figures for a detection batch
