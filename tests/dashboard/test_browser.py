"""The whole flow in a real Chromium: sign in, a dataset from a zip, labelling with the keyboard
and a box with the mouse, publishing, a training job and its curves, the model's conversion and
lineage, a device coming online and a deployment reaching ``installed``, an edge service rolled
out to it from its form; and a labeller's
attempt to deploy refused in the page and in the API. Each page is saved as a screenshot.

One server and one browser serve the module; the tests are few and broad to keep suite time low.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.agent.agent_process import AgentProcess
from tests.dashboard.browser import CHROMIUM, Served, serve, shot
from tests.dashboard.conftest import ADMIN_PASSWORD, make_settings
from tests.datasets.digits import digit_png, write_digits
from tests.fleet.conftest import fleet_section

API = "/api/v1"
SLOW = 180_000  # ms: a training job, then a conversion, on a shared 2-core machine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("browser")
    settings = make_settings(tmp, dev_mode=True, embedded_broker_port=0)
    yield from serve(settings)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium "
            "(apt-get install chromium; .ci/run installs it)",
            pytrace=False,
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def signed_in(browser: Browser, served: Served, user: str, password: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=served.base)
    page.set_default_timeout(20_000)
    page.goto("/ui/datasets")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    shot(page, "00-sign-in")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/datasets$"))
    return page


def api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.base + API, headers={"Authorization": f"Bearer {served.token}"}, timeout=30
    )


def test_whole_flow(browser: Browser, served: Served, tmp_path: Path) -> None:
    rest = api(served)
    page = signed_in(browser, served, "admin", ADMIN_PASSWORD)
    shot(page, "01-datasets-empty")

    # A dataset from a zip (ImageFolder layout: labelled by folder), with the progress bar.
    page.fill("#create-dataset input[name=name]", "digits")
    page.fill("#create-dataset input[name=labels]", "0, 1, 2")
    page.click("#create-dataset button[type=submit]")
    expect(page.locator("h1")).to_contain_text("digits")
    folder = tmp_path / "digits"
    write_digits(folder, per_class=8, seed=5)
    zpath = tmp_path / "digits.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            if p.parent.name in ("0", "1", "2"):
                zf.write(p, p.relative_to(folder).as_posix())
    page.set_input_files("#upload-zip input[type=file]", str(zpath))
    page.click("#upload-zip button[type=submit]")
    expect(page.locator("#upload-zip .report")).to_contain_text("imported 24")
    expect(page.locator("#upload-zip progress")).to_have_attribute("value", "100")
    # Three unlabelled images, then labelled one by one with the keyboard.
    images = []
    for i in range(3):
        path = tmp_path / f"new-{i}.png"
        path.write_bytes(digit_png(i, random.Random(100 + i)))
        images.append(str(path))
    page.set_input_files("#upload-files input[type=file]", images)
    page.click("#upload-files button[type=submit]")
    expect(page.locator("#upload-files .report")).to_contain_text("imported 3")
    ds = page.url.rstrip("/").rsplit("/", 1)[-1]
    page.reload()
    expect(page.locator("main")).to_contain_text("27 samples: 24 labelled, 3 unlabelled")
    shot(page, "02-dataset")
    page.click("#browse-samples")
    expect(page.locator("#sample-range")).to_contain_text("of 27")
    expect(page.locator("#sample-grid img").first).to_have_js_property("complete", True)
    shot(page, "02-samples")
    # Usable at 800 px: nothing wider than the window (grids wrap, tables scroll in sections).
    page.set_viewport_size({"width": 800, "height": 800})
    for url in (
        "/ui/",
        f"/ui/datasets/{ds}",
        f"/ui/datasets/{ds}/samples",
        "/ui/training",
        "/ui/services",
        "/ui/notebooks",
    ):
        page.goto(url)
        assert page.evaluate("document.documentElement.scrollWidth") <= 800, url
    shot(page, "02-samples-800px")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/ui/datasets/{ds}/label?unlabeled=true")
    shot(page, "03-labelling")
    for key in ("1", "2", "3"):
        sample = page.locator("#labeller").get_attribute("data-sample")
        with page.expect_navigation():
            page.keyboard.press(key)
        if key != "3":
            expect(page.locator("#labeller")).not_to_have_attribute("data-sample", sample or "")
    expect(page.locator("#nothing-to-label")).to_be_visible()
    labelled = rest.get(f"/datasets/{ds}/samples", params={"limit": 100}).json()["items"][-3:]
    got = [(s["annotations"][0]["label"], s["annotations"][0]["creator"]) for s in labelled]
    assert got == [("0", "admin"), ("1", "admin"), ("2", "admin")]
    # Undo (z) puts the last change back.
    with page.expect_navigation():
        page.keyboard.press("z")
    last = rest.get(f"/datasets/{ds}/samples/{labelled[-1]['id']}").json()
    assert last["annotations"] == []
    page.goto(f"/ui/datasets/{ds}/label?unlabeled=true")
    with page.expect_navigation():
        page.keyboard.press("3")
    expect(page.locator("#nothing-to-label")).to_be_visible()

    # Publish V001.
    page.goto(f"/ui/datasets/{ds}")
    page.fill("#publish input[name=train_ratio]", "0.7")
    page.click("#publish button[type=submit]")
    expect(page.locator('tr[data-version="V001"]')).to_contain_text("27")

    # A detection box drawn with the mouse.
    page.goto("/ui/datasets")
    page.fill("#create-dataset input[name=name]", "shapes")
    page.select_option("#create-dataset select[name=type]", "object_detection")
    page.fill("#create-dataset input[name=labels]", "box")
    page.click("#create-dataset button[type=submit]")
    expect(page.locator("h1")).to_contain_text("shapes")
    det = page.url.rstrip("/").rsplit("/", 1)[-1]
    big = tmp_path / "shape.png"
    big.write_bytes(digit_png(7, random.Random(1), size=200))
    page.set_input_files("#upload-files input[type=file]", str(big))
    page.click("#upload-files button[type=submit]")
    expect(page.locator("#upload-files .report")).to_contain_text("imported 1")
    page.goto(f"/ui/datasets/{det}/label")
    canvas = page.locator("#box-canvas")
    expect(canvas).to_have_attribute("data-boxes", "0")
    bbox = canvas.bounding_box()
    assert bbox is not None
    page.mouse.move(bbox["x"] + bbox["width"] * 0.2, bbox["y"] + bbox["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(bbox["x"] + bbox["width"] * 0.6, bbox["y"] + bbox["height"] * 0.8, steps=5)
    page.mouse.up()
    expect(canvas).to_have_attribute("data-boxes", "1")
    shot(page, "04-box")
    page.keyboard.press("s")
    expect(page.locator("#annotation-list")).to_contain_text("box [")
    sample = rest.get(f"/datasets/{det}/samples").json()["items"][0]
    box = sample["annotations"][0]["box"]
    assert abs(box["x"] - 40) < 4 and abs(box["y"] - 60) < 4, box
    assert abs(box["w"] - 80) < 4 and abs(box["h"] - 100) < 4, box

    # Training: a short job from the built-in form; its curves appear while the page refreshes.
    page.goto("/ui/training")
    form = page.locator("#create-job-image_classification")
    form.locator("input[name=name]").fill("digits-cnn")
    form.locator("input[name='hyperparameters.epochs']").fill("3")
    form.locator("input[name='hyperparameters.input_size']").fill("16")
    form.locator("input[name='hyperparameters.batch_size']").fill("8")
    shot(page, "05-training")
    form.locator("button[type=submit]").click()
    expect(page.locator("h1")).to_contain_text("digits-cnn")
    expect(page.locator(".state").first).to_have_text("succeeded", timeout=SLOW)
    expect(page.locator("svg[data-chart] polyline").first).to_be_visible()
    assert page.locator("svg[data-chart]").count() >= 2  # loss and accuracy at least
    expect(page.locator("#confusion")).to_contain_text("true \\ predicted")
    shot(page, "06-job")

    # TensorBoard through the control plane: started from the job page, its own page and its
    # POST queries served by the proxy under the session's auth.
    tag = page.locator("svg[data-chart]").first.get_attribute("data-chart") or ""
    job_url = page.url
    with page.expect_response(
        lambda r: "timeSeries" in r.url and r.request.method == "POST", timeout=SLOW
    ) as series:
        page.click("#start-tensorboard button[type=submit]")
        expect(page).to_have_url(re.compile(r"/tensorboard/[0-9a-f]+/"), timeout=SLOW)
    assert series.value.status == 200
    expect(page.get_by_text(tag, exact=True).first).to_be_visible()
    shot(page, "06-tensorboard")
    page.goto(job_url)
    expect(page.locator("#tensorboard .tensorboard-link")).to_be_visible()

    # Register the model; see its conversion report and lineage.
    page.click("#register-model button[type=submit]")
    expect(page.locator("h1")).to_contain_text("digits-cnn")
    expect(page.locator("h1 .state")).to_have_text("ready", timeout=SLOW)
    expect(page.locator("#conversion-report")).to_contain_text("onnx")
    lineage = page.locator("#lineage")
    expect(lineage).to_contain_text("dataset version")
    expect(lineage).to_contain_text("training job")
    expect(lineage).to_contain_text("package")
    model_url = page.url
    shot(page, "07-model")

    # An online service from the services page, then "try it" with an image: top-k comes back.
    page.goto("/ui/services")
    page.fill("#create-online input[name=name]", "digits-web")
    page.click("#create-online button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/services/digits-web$"))
    expect(page.locator("h1 .state")).to_have_text("running", timeout=90_000)
    expect(page.locator("#endpoint .grpc-address").first).to_contain_text("127.0.0.1:")
    png = tmp_path / "try.png"
    png.write_bytes(digit_png(1, random.Random(9)))
    page.select_option("#try-it-model", "digits-cnn")  # the path's model comes from here
    page.set_input_files("#try-it-form input[type=file]", str(png))
    page.click("#try-it-form button[type=submit]")
    expect(page.locator("#try-it-topk")).to_have_attribute("data-done", "true")
    lines = page.locator("#try-it-topk").inner_text().splitlines()
    assert lines and all(":" in line for line in lines), lines
    shot(page, "07-service")
    rest.delete("/services/digits-web")

    # A notebook on V001 from an example, opened through the proxy with the session, stopped.
    page.goto("/ui/notebooks")
    form = page.locator("#create-notebook")
    form.locator("input[name=name]").fill("dev")
    form.locator("select[name=dataset]").select_option(label="digits V001")
    form.locator("select[name=example]").select_option("digits_image_classification")
    form.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/ui/notebooks/[0-9a-f]+$"))
    notebook = page.url.rsplit("/", 1)[-1]
    try:
        assert rest.get(f"/notebooks/{notebook}").json()["dataset_version"] == "V001"
        expect(page.locator("#open-lab")).to_be_visible(timeout=SLOW)
        shot(page, "07-notebook")
        page.click("#open-lab")
        expect(page).to_have_title(re.compile("JupyterLab"), timeout=60_000)
        page.goto(f"/ui/notebooks/{notebook}")
        page.click("#stop-notebook button[type=submit]")
        expect(page.locator("#start-notebook")).to_be_visible(timeout=60_000)
        assert rest.get(f"/notebooks/{notebook}").json()["state"] == "stopped"
    finally:
        rest.delete(f"/notebooks/{notebook}")

    # A device: registered from the page (its bundle downloaded), then its agent started.
    page.goto("/ui/devices")
    page.fill("#register-device input[name=device_id]", "gw-1")
    page.fill("#register-device input[name=labels]", "site=lab")
    with page.expect_download() as dl:
        page.click("#register-device button[type=submit]")
    bundle = json.loads(Path(dl.value.path()).read_text())
    assert bundle["device_id"] == "gw-1"
    keys = []
    for i, pem in enumerate(bundle["trusted_keys_pem"]):
        keys.append(tmp_path / f"trusted-{i}.pub")
        keys[-1].write_text(pem)
    fleet = fleet_section(bundle)
    fleet["url"] = bundle["mqtt"]["url"]
    agent = AgentProcess(tmp_path / "agent", keys, device_id="gw-1", fleet=fleet)
    agent.start()
    try:
        page.goto("/ui/devices")
        for _ in range(100):
            if "online" in page.locator('tr[data-device="gw-1"]').inner_text():
                break
            page.wait_for_timeout(200)
            page.reload()
        expect(page.locator('tr[data-device="gw-1"] .state')).to_have_text("online")
        shot(page, "08-devices")
        page.goto("/ui/")
        expect(page.locator("#devices-online")).to_have_text("1")
        shot(page, "09-overview")

        # Deploy from the model's page; the deployment page follows it to "installed".
        page.goto(model_url)
        page.fill("#deploy input[name=device_id]", "gw-1")
        page.click("#deploy button[type=submit]")
        expect(page).to_have_url(re.compile(r"/ui/deployments/"))
        target = page.locator('#targets tr[data-device="gw-1"] .state')
        expect(target).to_have_text("installed", timeout=90_000)
        shot(page, "10-deployment")
        page.goto(model_url)
        expect(page.locator("#lineage")).to_contain_text("gw-1 (installed)")
        page.goto("/ui/devices/gw-1")
        expect(page.locator("h1 .state")).to_have_text("online")
        labels = page.locator("#device-labels input[name=labels]")
        expect(labels).to_have_value("site=lab")
        labels.fill("site=lab, floor=2")
        with page.expect_navigation():
            page.click("#device-labels button[type=submit]")
        expect(page.locator("#device-labels input[name=labels]")).to_have_value("site=lab, floor=2")
        assert rest.get("/devices/gw-1").json()["labels"] == {"site": "lab", "floor": "2"}
        held = page.locator('#device-models tr[data-model="digits-cnn"]')
        expect(held).to_have_attribute("data-out-of-band", "false")
        shot(page, "11-device")

        # An edge service from the form (selector, canary count, waves list): it reaches gw-1.
        page.goto("/ui/services")
        form = page.locator("#create-edge")
        form.locator("input[name=name]").fill("lab-edge")
        form.locator("select[name=model]").select_option("digits-cnn|1")
        form.locator("input[name='targets.selector']").fill("site=lab")
        form.locator("input[name='strategy.waves']").fill("50%, 100%")
        form.locator("input[name='strategy.bake_s']").fill("0")
        form.locator("button[type=submit]").click()
        expect(page).to_have_url(re.compile(r"/ui/services/lab-edge$"))
        spec = rest.get("/services/lab-edge").json()
        assert spec["targets"] == {"device_ids": None, "selector": {"site": "lab"}}, spec
        canary = page.locator('.stage[data-stage="canary"] tr[data-device="gw-1"]')
        expect(canary).to_have_attribute("data-state", "installed", timeout=60_000)
        expect(page.locator("#rollout")).to_have_attribute("data-state", "succeeded")
        shot(page, "11-edge-service")
        for name in ("models", "deployments", "account"):
            page.goto(f"/ui/{name}")
            expect(page.locator("h1")).to_be_visible()
            shot(page, f"15-{name}")
    finally:
        agent.stop()
    page.close()


def test_a_labeller_labels_but_cannot_deploy(browser: Browser, served: Served) -> None:
    admin = signed_in(browser, served, "admin", ADMIN_PASSWORD)
    admin.goto("/ui/users")
    admin.fill("#create-user input[name=username]", "lena")
    admin.fill("#create-user input[name=password]", "lena-password")
    admin.select_option("#create-user select[name=role]", "labeller")
    admin.click("#create-user button[type=submit]")
    expect(admin.locator('tr[data-user="lena"]')).to_contain_text("labeller")
    shot(admin, "12-users")
    admin.close()

    page = signed_in(browser, served, "lena", "lena-password")
    page.goto("/ui/deployments")
    button = page.locator("#create-deployment button[type=submit]")
    expect(button).to_be_disabled()
    # Forcing the request from the page (its cookie and CSRF token) is refused by the API.
    answer: Any = page.evaluate(
        """async () => {
          const csrf = document.querySelector('meta[name="csrf-token"]').content;
          const r = await fetch('/api/v1/deployments', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
            body: JSON.stringify({package_name: 'digits-cnn', package_version: '1',
                                  device_id: 'gw-1'})});
          return [r.status, await r.json()];
        }"""
    )
    assert answer[0] == 403 and answer[1]["error"] == "Forbidden", answer
    page.goto("/ui/users")
    expect(page.locator("#error-message")).to_contain_text("needs admin")
    shot(page, "13-labeller-refused")

    # She labels: a model's pre-label, shown with its confidence, accepted in one key press.
    rest = api(served)
    spec = {"name": "prelabels", "type": "image_classification", "labels": ["3", "8"]}
    ds = rest.post("/datasets", json=spec).json()["id"]
    png = digit_png(3, random.Random(9))
    rest.post(f"/datasets/{ds}/files", files=[("files", ("a.png", png, "image/png"))])
    sid = rest.get(f"/datasets/{ds}/samples").json()["items"][0]["id"]
    pre = {"label": "8", "source": "model", "creator": "digits-cnn:1", "confidence": 0.55}
    rest.put(f"/datasets/{ds}/samples/{sid}/annotations", json={"annotations": [pre]})
    page.goto(f"/ui/datasets/{ds}/label")
    expect(page.locator("#annotation-list")).to_contain_text("model digits-cnn:1 · confidence 0.55")
    shot(page, "14-prelabel")
    with page.expect_navigation():
        page.keyboard.press("a")
    ann = rest.get(f"/datasets/{ds}/samples/{sid}").json()["annotations"]
    assert [(a["label"], a["source"], a["creator"]) for a in ann] == [("8", "person", "lena")]
    page.close()
