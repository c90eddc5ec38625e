"""Review mode of the labelling pages in a real Chromium: a labeller goes through the captures
devices sent back, lowest confidence first, with the keyboard only: Enter accepts the model's
label, a number corrects it, n skips, d drops the sample. Each key press lands in the API as the
action it names, by her. Then an admin uses the flywheel's other pages: the edge service's
capture policy, a device's capture store and purge, the registry's signing keys.
Screenshots: test-artifacts/dashboard/20-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from control_plane.captures.receiver import CaptureReceiver
from protos import fleet_capture as wire
from tests.captures.device import meta, png
from tests.control_plane.conftest import Keys, build_test_package
from tests.dashboard.browser import CHROMIUM, Served, serve, shot
from tests.dashboard.conftest import ADMIN_PASSWORD, make_settings

API = "/api/v1"
DEVICE = "cam-review"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("review")
    settings = make_settings(tmp, dev_mode=True, embedded_broker_port=0)
    yield from serve(settings)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _captures(served: Served, models_dir: Path, tmp: Path) -> tuple[str, list[str]]:
    """Four captures of mlp 1 from a device, filed by the control plane's own receiver (the
    fleet channel's handler; the MQTT path is tested in tests/captures)."""
    rest = httpx.Client(
        base_url=served.base + API, headers={"Authorization": f"Bearer {served.token}"}
    )
    assert rest.post("/devices", json={"device_id": DEVICE}).status_code == 201
    key = served.settings.data_dir / "keys" / "signing.key"  # dev mode: the registry's, trusted
    pkg = build_test_package(
        models_dir / "mlp.onnx", tmp, Keys(key, key.with_suffix(".pub")), "1", "mlp"
    )
    with open(pkg, "rb") as f:
        assert rest.post("/packages", files={"file": ("p", f)}).status_code == 201
    labels = [str(d) for d in range(10)]
    spec = {"name": "mlp-captures", "type": "image_classification", "labels": labels}
    ds = rest.post("/datasets", json=spec).json()["id"]
    edge = {
        "name": "mlp-edge",
        "type": "edge",
        "models": [{"model": "mlp", "version": "1"}],
        "targets": {"device_ids": [DEVICE]},
        "capture": {"below_confidence": 0.6, "top_k": 3, "dataset": "mlp-captures"},
    }
    r = rest.post("/services", json=edge)
    assert r.status_code == 201, r.text
    receiver = CaptureReceiver(served.app.state.ctx)
    ids = []
    for n, score in enumerate((0.5, 0.2, 0.4, 0.3)):
        (chunk,) = wire.chunks_of(DEVICE, png(200 + n), meta(score=score, label="7"))
        ack = receiver.on_chunk(DEVICE, chunk)
        assert ack is not None and ack.state == wire.STORED, ack
        ids.append(rest.get("/captures", params={"device_id": DEVICE}).json()[-1]["id"])
    return ds, ids


def test_review_mode_with_the_keyboard(
    browser: Browser, served: Served, models_dir: Path, tmp_path: Path
) -> None:
    ds, ids = _captures(served, models_dir, tmp_path)
    by_score = [ids[1], ids[3], ids[2], ids[0]]  # 0.2, 0.3, 0.4, 0.5
    rest = httpx.Client(
        base_url=served.base + API, headers={"Authorization": f"Bearer {served.token}"}
    )
    r = rest.post("/users", json={"username": "rita", "password": "rita-pass", "role": "labeller"})
    assert r.status_code == 201, r.text

    page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=served.base)
    page.set_default_timeout(20_000)
    page.goto("/ui/login")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "rita-pass")
    page.click("button[type=submit]")
    page.goto(f"/ui/datasets/{ds}")
    expect(page.locator("#captures-pending")).to_contain_text("4 captured sample(s)")
    page.click("#review-link")
    expect(page).to_have_url(re.compile(r"/review$"))
    reviewer = page.locator("#reviewer")
    expect(reviewer).to_have_attribute("data-capture", by_score[0])
    expect(page.locator("#guess")).to_contain_text("7 · confidence 0.20")
    shot(page, "20-review-mode")

    with page.expect_navigation():
        page.keyboard.press("Enter")  # accept the model's 7
    expect(reviewer).to_have_attribute("data-capture", by_score[1])
    expect(page.locator("#pending")).to_have_text("3")
    with page.expect_navigation():
        page.keyboard.press("3")  # correct: it is a 3
    expect(reviewer).to_have_attribute("data-capture", by_score[2])
    with page.expect_navigation():
        page.keyboard.press("n")  # skip this one
    expect(reviewer).to_have_attribute("data-capture", by_score[3])
    shot(page, "21-review-skipped")
    with page.expect_navigation():
        page.keyboard.press("d")  # drop it
    expect(page.locator("#nothing-to-review")).to_be_visible()
    with page.expect_navigation():
        page.keyboard.press("ArrowLeft")
    expect(reviewer).to_have_attribute("data-capture", by_score[2])
    expect(page.locator("#pending")).to_have_text("1")

    got = {c["id"]: c for c in rest.get("/captures").json()}
    assert (got[by_score[0]]["state"], got[by_score[0]]["label"]) == ("accepted", "7")
    assert (got[by_score[1]]["state"], got[by_score[1]]["label"]) == ("corrected", "3")
    assert got[by_score[2]]["state"] == "pending"
    assert got[by_score[3]]["state"] == "dropped" and got[by_score[3]]["sample_id"] is None
    assert {got[i]["reviewed_by"] for i in by_score[:2]} == {"rita"}
    sample = rest.get(f"/datasets/{ds}/samples/{got[by_score[1]]['sample_id']}").json()
    assert [(a["label"], a["source"], a["creator"]) for a in sample["annotations"]] == [
        ("3", "person", "rita")
    ]
    page.close()

    # The edge service's page: its captures by state, the way to review them, and "Improve",
    # which says why it cannot run here (an uploaded package was made by no training job).
    admin = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=served.base)
    admin.goto("/ui/login")
    admin.fill("input[name=username]", "admin")
    admin.fill("input[name=password]", ADMIN_PASSWORD)
    admin.click("button[type=submit]")
    admin.goto("/ui/services/mlp-edge")
    counts = admin.locator("#capture-counts")
    expect(counts.locator('[data-state="pending"]')).to_have_text("pending: 1")
    expect(counts.locator('[data-state="accepted"]')).to_have_text("accepted: 1")
    expect(counts.locator('[data-state="dropped"]')).to_have_text("dropped: 1")
    expect(admin.locator("#review-captures")).to_have_attribute("href", f"/ui/datasets/{ds}/review")
    admin.click("#improve-service button[type=submit]")
    expect(admin.locator("#improve-service .form-error")).to_contain_text("mlp version 1")
    shot(admin, "22-edge-flywheel")

    # The capture policy form: the block as it is, changed in place (PATCH, no new rollout).
    form = admin.locator("#capture-form")
    expect(form.locator('[name="capture.below_confidence"]')).to_have_value("0.6")
    expect(form.locator('[name="capture.dataset"]')).to_have_value("mlp-captures")
    expect(form.locator('[name="capture.top_k"]')).to_have_value("3")  # kept through a save
    form.locator('[name="capture.below_confidence"]').fill("0.35")
    form.locator('[name="capture.on_request"]').check()
    with admin.expect_navigation():
        form.locator("button[type=submit]").click()
    expect(admin.locator("#flywheel")).to_contain_text("below 0.35 confidence, on request")
    svc = rest.get("/services/mlp-edge").json()
    assert svc["capture"] == {
        "enabled": True,
        "below_confidence": 0.35,
        "sample_fraction": 0.0,
        "on_disagreement": False,
        "on_request": True,
        "top_k": 3,
        "dataset": "mlp-captures",
    }
    assert svc["rollout"]["number"] == 1
    form.locator('[name="capture.below_confidence"]').fill("2")  # out of range: the API says so
    form.locator("button[type=submit]").click()
    expect(form.locator(".form-error")).to_contain_text("less than or equal to 1")

    # The device's page: its capture store as it reported it, and a purge order for it.
    status = wire.CaptureStatus(
        DEVICE, stored_records=7, stored_bytes=3 << 20, captured_total=11, uploaded_total=4,
        dropped_total=2,
    )  # fmt: skip
    CaptureReceiver(served.app.state.ctx).on_status(DEVICE, status)
    admin.goto(f"/ui/devices/{DEVICE}")
    store = admin.locator("#device-captures")
    expect(store.locator('[data-field="stored"]')).to_have_text("7 (3.0 MiB)")
    expect(store.locator('[data-field="dropped"]')).to_have_text("2")
    expect(store.locator('[data-field="received"]')).to_have_text("4")
    expect(admin.locator("#purge-state")).to_have_text("No purge asked.")
    with admin.expect_navigation():
        admin.click("#purge-captures button[type=submit]")
    expect(admin.locator("#purge-state")).to_contain_text("not applied yet")
    asked = rest.get(f"/captures/devices/{DEVICE}").json()
    assert asked["purge_id"] and asked["purge_id"] in admin.locator("#purge-state").inner_text()
    shot(admin, "23-device-captures")

    # The registry's signing keys on the models page; an admin rotates from there.
    admin.goto("/ui/models")
    keys = admin.locator("#signing-keys tr[data-key]")
    expect(keys).to_have_count(1)
    first = keys.first.get_attribute("data-key")
    with admin.expect_navigation():
        admin.click("#rotate-key button[type=submit]")
    expect(keys).to_have_count(2)
    expect(admin.locator(f'#signing-keys tr[data-key="{first}"]')).to_have_attribute(
        "data-state", "retired"
    )
    listed = rest.get("/registry/keys").json()
    assert [(k["generation"], k["state"]) for k in listed] == [(2, "current"), (1, "retired")]
    admin.close()

    # A viewer sees the queue but cannot act on it.
    r = rest.post("/users", json={"username": "vic", "password": "vic-pass1", "role": "viewer"})
    viewer = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=served.base)
    viewer.goto("/ui/login")
    viewer.fill("input[name=username]", "vic")
    viewer.fill("input[name=password]", "vic-pass1")
    viewer.click("button[type=submit]")
    viewer.goto("/ui/models")
    expect(viewer.locator("#rotate-key button[type=submit]")).to_be_disabled()
    viewer.goto(f"/ui/datasets/{ds}/review")
    expect(viewer.locator("#accept-capture")).to_be_disabled()
    viewer.keyboard.press("Enter")
    expect(viewer.locator("#review-error")).to_contain_text("needs labeller")
    assert rest.get(f"/captures/{by_score[2]}").json()["state"] == "pending"
    viewer.close()
