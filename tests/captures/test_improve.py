"""One improvement from reviewed captures to a canary, through the API, on a real broker and
the real training, registry and rollout machinery: a small digits CNN serves an edge service
that captures into its own dataset; reviewed captures join the training dataset's next version,
the job that made the model runs again on it, the result is registered as version 2 (converted
like version 1) and the edge service's rollout to it starts with the canary, whose deployment
carries the service's capture policy. Lineage leads from version 2's package back to the device
captures. (The end-to-end loop with real agents and an accuracy gain: test_flywheel_e2e.py.)
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from control_plane.deployments.service import DeploymentService
from protos import fleet_capture as wire
from tests.captures.device import CaptureDevice, meta
from tests.control_plane.conftest import Keys, wait_for
from tests.datasets.digits import digit_png, write_digits
from tests.fleet.conftest import Fleet

API = "/api/v1"
DEVICE = "cam-improve"


def train_digits_model(fleet: Fleet, keys: Keys, folder: Path, per_class: int = 20) -> str:
    """digits dataset V001, a small CNN job on it, registered as model ``digits`` version 1
    (signed with the key the test devices trust); returns the job id."""
    key = fleet.ctx.settings.data_dir / "keys" / "signing.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys.private, key)
    write_digits(folder, per_class=per_class, seed=5)
    fleet.ctx.settings.datasets.import_roots.append(folder)
    api = fleet.api
    r = api.post(f"{API}/datasets", json={"name": "digits", "type": "image_classification"})
    ds = r.json()["id"]
    r = api.post(f"{API}/datasets/{ds}/imports", json={"path": str(folder)})
    assert r.status_code == 200, r.text
    r = api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.8, "seed": 1})
    assert r.status_code == 201, r.text
    job = {
        "name": "digits-cnn",
        "algorithm": "image_classification",
        "dataset_id": ds,
        "dataset_version": "V001",
        "hyperparameters": {"input_size": 28, "epochs": 4},
    }
    r = api.post(f"{API}/training/jobs", json=job)
    assert r.status_code == 201, r.text
    job_id = str(r.json()["id"])
    wait_state(fleet, f"/training/jobs/{job_id}", ("succeeded",), ("failed", "canceled"))
    r = api.post(
        f"{API}/models", json={"name": "digits", "job_id": job_id, "targets": ["onnx-fp32"]}
    )
    assert r.status_code == 202, r.text
    wait_state(fleet, "/models/digits/versions/1", ("ready",), ("failed",))
    return job_id


def wait_state(
    fleet: Fleet, path: str, good: tuple[str, ...], bad: tuple[str, ...], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = fleet.api.get(f"{API}{path}").json()
        if body["state"] in good:
            return dict(body)
        assert body["state"] not in bad, body
        time.sleep(0.3)
    raise AssertionError(f"{path} still {body['state']}")


def test_improvement_from_reviewed_captures_to_canary(
    fleet: Fleet, fleet_keys: dict[str, Keys], tmp_path: Path
) -> None:
    first_job = train_digits_model(fleet, fleet_keys["trusted"], tmp_path / "digits")
    fleet.register(DEVICE)
    capture = {"below_confidence": 0.9, "dataset": "digits-field"}
    r = fleet.api.post(
        f"{API}/services",
        json={
            "name": "digits-edge",
            "type": "edge",
            "models": [{"model": "digits", "version": "1"}],
            "targets": {"device_ids": [DEVICE]},
            "strategy": {"canary": 1, "bake_s": 0},
            "capture": capture,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["capture"]["dataset"] == "digits-field"

    # The device's desired state carries the policy (without the dataset), once the rollout
    # engine has started the canary stage.
    def policy() -> dict[str, Any] | None:
        with fleet.ctx.sessions() as session:
            view = DeploymentService(session, fleet.ctx).desired_state(DEVICE)
        return view.models[0].capture if view is not None and view.models else None

    assert wait_for(policy, timeout=30, interval=0.3) == {
        "enabled": True,
        "below_confidence": 0.9,
        "sample_fraction": 0.0,
        "on_disagreement": False,
        "on_request": False,
        "top_k": 0,
    }

    # Four captures from the device land in the service's dataset, with the model's labels.
    dev = CaptureDevice(fleet.observer(), DEVICE)
    rng = random.Random(9)
    truth = [3, 8, 5, 1]
    for i, digit in enumerate(truth):
        d = dev.send(digit_png(digit, rng), meta(model="digits", score=0.3 + i / 10, label="0"))
        assert dev.ack(d).state == wire.STORED
    q = fleet.api.get(f"{API}/captures/review", params={"dataset": "digits-field"}).json()
    assert q["labels"] == [str(i) for i in range(10)] and q["pending"] == 4
    assert {i["service_name"] for i in q["items"]} == {"digits-edge"}
    items = q["items"]
    for item, digit in zip(items[:3], truth, strict=False):
        r = fleet.api.post(
            f"{API}/captures/{item['id']}/review", json={"action": "correct", "label": str(digit)}
        )
        assert r.status_code == 200, r.text
    r = fleet.api.post(f"{API}/captures/{items[3]['id']}/review", json={"action": "drop"})
    assert r.status_code == 200, r.text

    # Steps alone refuse what they cannot do, with the reason.
    r = fleet.api.post(f"{API}/captures/register", json={"service": "nope", "job_id": "x"})
    assert r.status_code == 404
    r = fleet.api.post(
        f"{API}/captures/retrain", json={"service": "digits-edge", "dataset_version": "V9"}
    )
    assert r.status_code == 404, r.text

    r = fleet.api.post(f"{API}/captures/improvements", json={"service": "digits-edge"})
    assert r.status_code == 202, r.text
    imp = wait_state(fleet, f"/captures/improvements/{r.json()['id']}", ("succeeded",), ("failed",))
    steps = imp["steps"]
    assert steps["publish"]["version"] == "V002" and steps["publish"]["captures"] == 3
    assert steps["publish"]["sample_count"] == 200 + 3
    assert steps["register"]["version"] == "2" and steps["rollout"]["number"] == 2
    # A second improvement has nothing new to publish.
    r = fleet.api.post(f"{API}/captures/improvements", json={"service": "digits-edge"})
    assert r.status_code == 422 and "no reviewed captures" in r.text

    job2 = fleet.api.get(f"{API}/training/jobs/{steps['train']['job_id']}").json()
    first = fleet.api.get(f"{API}/training/jobs/{first_job}").json()
    assert (job2["version"], job2["parent_id"], job2["dataset_version"]) == (2, first_job, "V002")
    assert job2["hyperparameters"] == first["hyperparameters"]
    v2 = fleet.api.get(f"{API}/models/digits/versions/2").json()
    assert [t for t in v2["conversion"]["targets"]] == ["onnx-fp32"]

    # The edge service now rolls version 2 out, canary first, with the capture policy.
    service = fleet.api.get(f"{API}/services/digits-edge").json()
    assert (
        service["models"] == [{"model": "digits", "version": "2"}]
        or service["models"][0]["version"] == "2"
    )
    rollout = service["rollout"]
    assert (rollout["number"], rollout["version"]) == (2, "2")
    assert rollout["stages"][0]["name"] == "canary"

    def canary_deployed() -> bool:
        with fleet.ctx.sessions() as session:
            view = DeploymentService(session, fleet.ctx).desired_state(DEVICE)
        return view is not None and any(
            m.version == "2" and m.capture and m.capture["below_confidence"] == 0.9
            for m in view.models
        )

    wait_for(canary_deployed, timeout=30, interval=0.3)

    # Lineage: version 2's package came from the three reviewed captures of the device.
    lin = fleet.api.get(f"{API}/captures/lineage/{v2['package_digest']}").json()
    assert (lin["dataset_version"], lin["job_id"]) == ("V002", job2["id"])
    assert lin["devices"] == {DEVICE: 3}
    assert sorted(c["label"] for c in lin["captures"]) == sorted(str(d) for d in truth[:3])
    v1 = fleet.api.get(f"{API}/models/digits/versions/1").json()
    assert fleet.api.get(f"{API}/captures/lineage/{v1['package_digest']}").json()["captures"] == []
