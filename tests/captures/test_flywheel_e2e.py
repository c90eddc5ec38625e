"""The data flywheel end to end, with real agents, a real Mosquitto and the real control plane.

A digits CNN trained on style A (bright strokes on black) is rolled out by an edge service to two
devices, capturing what it is unsure about. The devices are then shown style B (the same digits
inverted). Every low-confidence request arrives at the control plane once (a repeated image is
one record), as a sample of the service's dataset pre-labelled with the model's guess; a
reviewer corrects the guesses through the API from the true labels; one improvement publishes
them with the earlier data, retrains the same job, registers version 2 and opens its canary
rollout. Version 2 reaches the canary device first, scores higher than version 1 on a held-out
set of style B there, and lineage leads from its package back to the two devices' captures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient

from tests.agent.agent_process import AgentProcess
from tests.captures.flywheel import API, train_digits_model, wait_state
from tests.control_plane.conftest import Keys, wait_for
from tests.dashboard.conftest import sign_in
from tests.datasets.digits import inverted_digits
from tests.fleet.conftest import Fleet, fleet_section

DEVICES = ("cam-a", "cam-b")
THRESHOLD = 0.98  # below_confidence of the service's capture policy


def _agent(fleet: Fleet, keys: Keys, device_id: str, tmp: Path) -> AgentProcess:
    bundle = fleet.register(device_id)
    agent = AgentProcess(
        tmp / "agents" / device_id,
        [keys.public],
        device_id=device_id,
        fleet=fleet_section(bundle),
        capture={"ack_timeout_s": 2.0, "status_interval_s": 0.2},
    )
    return agent.start()


def _infer(agent: AgentProcess, png: bytes, version: str | None = None) -> np.ndarray:
    path = f"/v2/models/digits{f'/versions/{version}' if version else ''}/infer"
    r = httpx.post(agent.http_url + path, files={"file": ("x.png", png, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = [o for o in r.json()["outputs"] if len(o["data"]) == 10]
    return np.asarray(out["data"], dtype=np.float64)


def _accuracy(agent: AgentProcess, images: list[tuple[bytes, int]], version: str) -> float:
    hits = sum(int(np.argmax(_infer(agent, png, version))) == d for png, d in images)
    return hits / len(images)


def _active(fleet: Fleet, device_id: str) -> str | None:
    for m in (fleet.device(device_id).get("reported") or {}).get("models", []):
        if m["name"] == "digits" and m.get("active"):
            return str(m["version"])
    return None


def test_flywheel_end_to_end(fleet: Fleet, fleet_keys: dict[str, Keys], tmp_path: Path) -> None:
    keys = fleet_keys["trusted"]
    first_job = train_digits_model(fleet, keys, tmp_path / "digits", per_class=30, epochs=6)
    agents = {d: _agent(fleet, keys, d, tmp_path) for d in DEVICES}
    try:
        _loop(fleet, agents, first_job)
    finally:
        for a in agents.values():
            a.stop()


def _loop(fleet: Fleet, agents: dict[str, AgentProcess], first_job: str) -> None:
    r = fleet.api.post(
        f"{API}/services",
        json={
            "name": "digits-edge",
            "type": "edge",
            "models": [{"model": "digits", "version": "1"}],
            "targets": {"device_ids": list(DEVICES)},
            "strategy": {"canary": 1, "waves": ["100%"], "bake_s": 0},
            "capture": {"below_confidence": THRESHOLD, "dataset": "digits-field"},
        },
    )
    assert r.status_code == 201, r.text
    wait_state(fleet, "/services/digits-edge", ("running",), ("failed",), timeout=120)
    assert all(_active(fleet, d) == "1" for d in DEVICES)

    # Style B on the devices, half each; one image twice. What the model was unsure about is
    # what must come back, once each, with the model's guess.
    served = inverted_digits(60, seed=21)
    truth = {hashlib.sha256(png).hexdigest(): digit for png, digit in served}
    unsure: dict[str, int] = {}
    for n, (png, _digit) in enumerate(served):
        agent = agents[DEVICES[n % 2]]
        probs = _infer(agent, png)
        if abs(probs.max() - THRESHOLD) < 1e-4:
            continue  # too close to call: leave it out of the expectation
        if probs.max() < THRESHOLD:
            unsure[hashlib.sha256(png).hexdigest()] = int(np.argmax(probs))
    _infer(agents[DEVICES[1]], served[0][0])  # the first image again, on the other device
    assert len(unsure) >= 20, f"only {len(unsure)} of 60 style-B images were unsure"

    def arrived() -> list[dict[str, Any]] | None:
        caps = fleet.api.get(f"{API}/captures", params={"limit": 1000}).json()
        return caps if {c["digest"] for c in caps} >= set(unsure) else None

    caps = wait_for(arrived, timeout=60, interval=0.5)
    digests = [c["digest"] for c in caps]
    assert len(digests) == len(set(digests))  # once each
    for c in caps:
        if c["digest"] in unsure:
            assert c["predicted"] == str(unsure[c["digest"]]), c
        assert c["confidence"] < THRESHOLD and c["service_name"] == "digits-edge"
    ds = fleet.api.get(f"{API}/captures/review", params={"dataset": "digits-field"}).json()
    assert ds["pending"] == len(caps)
    sample = fleet.api.get(
        f"{API}/datasets/{caps[0]['dataset_id']}/samples/{caps[0]['sample_id']}"
    ).json()
    assert sample["annotations"][0]["source"] == "model"
    assert sample["annotations"][0]["creator"] == "model:digits:1"

    # The reviewer: the true label of each, through the API.
    for c in caps:
        label = str(truth[c["digest"]])
        body = (
            {"action": "accept"}
            if c["predicted"] == label
            else {"action": "correct", "label": label}
        )
        r = fleet.api.post(f"{API}/captures/{c['id']}/review", json=body)
        assert r.status_code == 200, r.text

    held_out = inverted_digits(100, seed=99)
    before = _accuracy(agents[DEVICES[0]], held_out, "1")

    # Steps alone refuse what they cannot do, with the reason.
    r = fleet.api.post(f"{API}/captures/register", json={"service": "nope", "job_id": "x"})
    assert r.status_code == 404, r.text
    bad = {"service": "digits-edge", "dataset_version": "V9"}
    assert fleet.api.post(f"{API}/captures/retrain", json=bad).status_code == 404

    r = fleet.api.post(f"{API}/captures/improvements", json={"service": "digits-edge"})
    assert r.status_code == 202, r.text
    imp = wait_state(fleet, f"/captures/improvements/{r.json()['id']}", ("succeeded",), ("failed",))
    steps = imp["steps"]
    assert steps["publish"]["captures"] == len(caps) and steps["register"]["version"] == "2"
    assert steps["publish"]["version"] == "V002"
    job2 = fleet.api.get(f"{API}/training/jobs/{steps['train']['job_id']}").json()
    first = fleet.api.get(f"{API}/training/jobs/{first_job}").json()
    assert (job2["version"], job2["parent_id"], job2["dataset_version"]) == (2, first_job, "V002")
    assert job2["hyperparameters"] == first["hyperparameters"]
    # Nothing new to publish: a second improvement is refused.
    r = fleet.api.post(f"{API}/captures/improvements", json={"service": "digits-edge"})
    assert r.status_code == 422 and "no reviewed captures" in r.text

    # Canary first: version 2 reaches the canary device.
    rollout = fleet.api.get(f"{API}/services/digits-edge").json()["rollout"]
    assert rollout["version"] == "2" and rollout["stages"][0]["devices"] == [DEVICES[0]]
    wait_for(lambda: _active(fleet, DEVICES[0]) == "2", timeout=120, interval=0.5)
    after = _accuracy(agents[DEVICES[0]], held_out, "2")
    assert after > before, (before, after)

    v2 = fleet.api.get(f"{API}/models/digits/versions/2").json()
    assert v2["conversion"]["targets"] == ["onnx-fp32"]  # converted like version 1
    lin = fleet.api.get(f"{API}/captures/lineage/{v2['package_digest']}").json()
    assert lin["dataset_version"] == "V002" and sum(lin["devices"].values()) == len(caps)
    assert set(lin["devices"]) == set(DEVICES)
    assert sorted(c["label"] for c in lin["captures"]) == sorted(
        str(truth[c["digest"]]) for c in caps
    )
    # The model version's page draws the same lineage, from the device captures on.
    r = fleet.api.post(
        f"{API}/users", json={"username": "vera", "password": "vera-pass1", "role": "viewer"}
    )
    assert r.status_code == 201, r.text
    browser = TestClient(fleet.app)
    sign_in(browser, "vera", "vera-pass1")
    html = browser.get("/ui/models/digits/2").text
    assert "device captures" in html and f"{len(caps)} from 2 device(s)" in html
    v1 = fleet.api.get(f"{API}/models/digits/versions/1").json()
    assert fleet.api.get(f"{API}/captures/lineage/{v1['package_digest']}").json()["captures"] == []
    print(f"style B held out: version 1 {before:.2f}, version 2 {after:.2f}")
