"""Demo (``--flywheel``): one turn of the data flywheel on the running control plane and device.

The device runs ``digits-cnn`` 1 (step 17), trained on digits drawn bright on black. An edge
service takes it over with a capture policy (keep what the model is less than 98 % sure of, into
the dataset ``digits-field``). The device is then shown digits drawn the other way round (dark on
white): the requests the model was unsure about come back to the control plane as captures,
pre-labelled with its guesses. An automatic "review" stands in for a person: the demo knows the
true digit of every image it sent (by the image's sha256, which is the capture's digest) and
accepts or corrects each guess through the SDK. One improvement then publishes the reviewed
captures with the earlier data as the next dataset version, re-runs the training job on it,
registers version 2 and opens its canary rollout to the device; the accuracy of version 1 and
version 2 on a held-out set of the new style, both asked of the device, is printed.

Every control-plane call goes through the SDK (``demo.api``); the requests to the device are
plain HTTP (multipart image uploads to the agent's OIP REST server).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (HERE, REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from demo_fleet import DEVICE_ID, FleetDemo, _wait, step  # noqa: E402

from tests.datasets.digits import inverted_digits  # noqa: E402

SERVICE = "digits-flywheel"
THRESHOLD = 0.98
SHOWN = 80
HELD_OUT = 100


def _probs(http_url: str, model: str, png: bytes, version: str | None = None) -> np.ndarray:
    path = f"/v2/models/{model}{f'/versions/{version}' if version else ''}/infer"
    r = httpx.post(http_url + path, files={"file": ("x.png", png, "image/png")}, timeout=30)
    r.raise_for_status()
    out = next(o for o in r.json()["outputs"] if len(o["data"]) == 10)
    return np.asarray(out["data"], dtype=np.float64)


def _accuracy(http_url: str, model: str, images: list[tuple[bytes, int]], version: str) -> float:
    hits = sum(int(np.argmax(_probs(http_url, model, png, version))) == d for png, d in images)
    return hits / len(images)


def run_flywheel(demo: FleetDemo, model: str, version: str) -> None:
    api = demo.api
    ports = json.loads((demo.work / "fleet-agent-ports.json").read_text())
    http_url = f"http://127.0.0.1:{ports['http']}"

    step(f"F1. An edge service for {model} {version} that captures what the model is unsure of")
    api.services.create(
        SERVICE,
        [{"model": model, "version": version}],
        type="edge",
        targets={"device_ids": [DEVICE_ID]},
        strategy={"canary": 1, "waves": ["100%"], "bake_s": 0},
        capture={"below_confidence": THRESHOLD, "dataset": "digits-field"},
    )
    _wait(
        "the edge service's rollout (with its capture policy)",
        lambda: api.services.get(SERVICE).state == "running",
        120,
        0.3,
    )
    print(f"edge service {SERVICE} running on {DEVICE_ID}: capture below {THRESHOLD:.0%}")

    step(f"F2. The device sees {SHOWN} digits drawn another way (dark on white)")
    shown = inverted_digits(SHOWN, seed=21)
    truth = {hashlib.sha256(png).hexdigest(): digit for png, digit in shown}
    unsure = sum(_probs(http_url, model, png).max() < THRESHOLD for png, _ in shown)
    print(f"{unsure} of {SHOWN} answered with less than {THRESHOLD:.0%} confidence")

    def arrived() -> int | None:
        n = len(api.captures.list(service=SERVICE, limit=1000))
        return n if n >= unsure else None

    got = _wait("the captures reaching the control plane", arrived, 120, 0.5)
    queue = api.captures.review_queue("digits-field", limit=500)
    print(
        f"{got} captures in dataset {queue.dataset_name}, pre-labelled by the model; "
        f"lowest confidence first: "
        + ", ".join(f"{c.predicted} ({c.confidence:.2f})" for c in queue.items[:5])
    )

    step("F3. Automatic review from the true labels (accept or correct each guess)")
    accepted = corrected = 0
    for c in queue.items:
        label = str(truth[c.digest])
        if c.predicted == label:
            api.captures.accept(c.id)
            accepted += 1
        else:
            api.captures.correct(c.id, label)
            corrected += 1
    print(f"accepted {accepted}, corrected {corrected}")

    held_out = inverted_digits(HELD_OUT, seed=99)
    before = _accuracy(http_url, model, held_out, version)

    step("F4. Improve: publish, retrain the same job, register, canary (one action)")
    t0 = time.monotonic()
    imp = api.captures.improve(SERVICE)
    seen: set[str] = set()

    def show(i: object) -> None:
        step_name = getattr(i, "step", "")
        if step_name not in seen:
            seen.add(step_name)
            print(f"  +{time.monotonic() - t0:5.1f} s  {step_name}")

    imp = api.captures.wait_improvement(imp.id, timeout=1800, poll_s=1.0, on_poll=show)
    if imp.state != "succeeded":
        raise SystemExit(f"demo: improvement {imp.state}: {imp.error}")
    s = imp.steps
    new_version = s["register"]["version"]
    print(
        f"published {s['publish']['version']} (+{s['publish']['captures']} reviewed captures, "
        f"{s['publish']['sample_count']} samples), job {s['train']['job_id']}, model "
        f"{model} {new_version}, rollout {s['rollout']['number']} (canary first)"
    )

    def active() -> bool:
        for m in (api.devices.get(DEVICE_ID).reported or {}).get("models", []):
            if m["name"] == model and m.get("active") and m["version"] == new_version:
                return True
        return False

    _wait(f"{model} {new_version} active on the canary device", active, 300, 0.5)
    print(f"{model} {new_version} is active on {DEVICE_ID} (the canary)")

    step("F5. Accuracy on a held-out set of the new style, asked of the device")
    after = _accuracy(http_url, model, held_out, new_version)
    print(f"version {version}: {before:.3f}   version {new_version}: {after:.3f}")
    digest = api.models.get(model, new_version).package_digest or ""
    lineage = api.captures.lineage(digest)
    print(
        f"lineage: {model} {new_version} <- {lineage['dataset_version']} <- "
        f"{sum(lineage['devices'].values())} captures from {', '.join(lineage['devices'])}"
    )
