"""The review queue over captures that arrived through the real broker: ordered by the model's
confidence or by shadow disagreement; accept, correct and drop change the sample's labels the way
a labeller means them (the reviewer as creator), and a dropped capture stays held by digest."""

from __future__ import annotations

from fastapi.testclient import TestClient

from edge_inference_sdk import Client
from protos import fleet_capture as wire
from tests.captures.device import as_device, meta, png
from tests.control_plane.conftest import API_TOKEN
from tests.dashboard.conftest import sign_in
from tests.fleet.conftest import Fleet, Packages

API = "/api/v1"
DEVICE = "cam-review"


def _user(fleet: Fleet, name: str, role: str) -> TestClient:
    password = "password-123"
    r = fleet.api.post(f"{API}/users", json={"username": name, "password": password, "role": role})
    assert r.status_code == 201, r.text
    client = TestClient(fleet.app)
    csrf = sign_in(client, name, password)
    r = client.post(f"{API}/users/me/tokens", json={"name": "t"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    return TestClient(fleet.app, headers={"Authorization": f"Bearer {r.json()['token']}"})


def test_review_queue_order_and_actions(fleet: Fleet, packages: Packages) -> None:
    fleet.upload(packages.v1)
    dev = as_device(fleet.port, fleet.register(DEVICE))
    fleet.probes.append(dev.probe)
    # (score, label, shadow's top-1 or None)
    sent = [(0.6, "7", None), (0.2, "1", None), (0.4, "7", None), (0.3, "7", "2"), (0.5, "1", "4")]
    digests = []
    for i, (score, label, shadow) in enumerate(sent):
        d = dev.send(png(100 + i), meta(score=score, label=label, shadow=shadow))
        assert dev.ack(d).state == wire.STORED
        digests.append(d)

    q = fleet.api.get(f"{API}/captures/review", params={"dataset": "mlp-captures"}).json()
    assert q["pending"] == 5 and q["dataset_name"] == "mlp-captures"
    assert [i["confidence"] for i in q["items"]] == [0.2, 0.3, 0.4, 0.5, 0.6]
    # The same through the SDK (typed).
    sdk = Client(token=API_TOKEN, http_client=fleet.api)
    typed = sdk.captures.review_queue(q["dataset_id"], order="disagreement")
    assert typed.pending == 5 and typed.items[0].disagreement
    q2 = typed.model_dump(mode="json")
    assert [(i["disagreement"], i["confidence"]) for i in q2["items"]] == [
        (True, 0.3),
        (True, 0.5),
        (False, 0.2),
        (False, 0.4),
        (False, 0.6),
    ]
    assert q2["items"][0]["shadow_version"] == "2" and q2["items"][0]["reason"] == "disagreement"
    bad = fleet.api.get(f"{API}/captures/review", params={"dataset": "mlp-captures", "order": "x"})
    assert bad.status_code == 422

    labeller = _user(fleet, "lena", "labeller")
    viewer = _user(fleet, "vera", "viewer")
    first, second, third = (i["id"] for i in q["items"][:3])
    url = f"{API}/captures/{{}}/review"
    assert viewer.post(url.format(first), json={"action": "accept"}).status_code == 403

    r = labeller.post(url.format(first), json={"action": "accept"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["label"], r.json()["reviewed_by"]) == (
        "accepted",
        "1",
        "lena",
    )
    r = labeller.post(url.format(second), json={"action": "correct", "label": "1"})
    assert r.status_code == 200 and r.json()["state"] == "corrected", r.text
    # A label outside the dataset's label set, a correct without a label: refused, nothing changes.
    r = labeller.post(url.format(third), json={"action": "correct", "label": "nine"})
    assert r.status_code == 422 and "label set" in r.text, r.text
    assert labeller.post(url.format(third), json={"action": "correct"}).status_code == 422
    r = labeller.post(url.format(third), json={"action": "drop"})
    assert r.status_code == 200 and r.json()["state"] == "dropped" and r.json()["sample_id"] is None

    def annotations(capture: dict) -> list[dict]:
        s = fleet.api.get(f"{API}/datasets/{capture['dataset_id']}/samples/{capture['sample_id']}")
        assert s.status_code == 200, s.text
        return [
            {k: a[k] for k in ("label", "source", "creator", "confidence")}
            for a in s.json()["annotations"]
        ]

    c1 = fleet.api.get(f"{API}/captures/{first}").json()
    assert annotations(c1) == [
        {"label": "1", "source": "person", "creator": "lena", "confidence": 1.0}
    ]
    c2 = fleet.api.get(f"{API}/captures/{second}").json()
    assert annotations(c2)[0]["label"] == "1" and annotations(c2)[0]["source"] == "person"
    # The dropped sample left the dataset; its capture stays, and cannot be reviewed again.
    ds = fleet.api.get(f"{API}/datasets/{q['dataset_id']}").json()
    assert ds["sample_count"] == 4
    assert labeller.post(url.format(third), json={"action": "accept"}).status_code == 409
    # Its record, sent again, is held already: STORED, no new sample.
    c3 = fleet.api.get(f"{API}/captures/{third}").json()
    idx = digests.index(c3["digest"])
    dev.send(png(100 + idx), meta(score=sent[idx][0], label=sent[idx][1]))
    assert dev.ack(c3["digest"]).state == wire.STORED
    assert fleet.api.get(f"{API}/datasets/{q['dataset_id']}").json()["sample_count"] == 4

    q3 = fleet.api.get(f"{API}/captures/review", params={"dataset": "mlp-captures"}).json()
    assert q3["pending"] == 2 and [i["confidence"] for i in q3["items"]] == [0.5, 0.6]
    states = {c["state"] for c in fleet.api.get(f"{API}/captures").json()}
    assert states == {"accepted", "corrected", "dropped", "pending"}
