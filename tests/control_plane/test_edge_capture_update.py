"""An edge service's capture block: changed in place with ``PATCH /services/{name}`` and carried by
a rollback's re-activation, as the devices see it in their retained desired state.

The device here is a probe with the device's own credentials (no agent): it reads the desired
state and reports what it runs, as an agent would.
"""

from __future__ import annotations

from typing import Any

from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import ControlPlane, wait_for


def _service(cp: ControlPlane, name: str) -> dict[str, Any]:
    r = cp.api.get(f"/api/v1/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


class Device:
    """A registered device's probe: the newest desired state, and reports of what it runs."""

    def __init__(self, cp: ControlPlane, name: str) -> None:
        reg = cp.register(name, {"site": "north"})
        self.id = reg["device"]["id"]
        self.probe = cp.device_probe(reg)
        self.probe.subscribe(topics.device_topic(self.id, topics.DESIRED))
        self.latest: fleet_pb2.DesiredState | None = None

    def desired(self, generation: int, timeout: float = 10) -> fleet_pb2.DesiredState:
        """The desired state once its generation reaches ``generation``."""

        def newest() -> fleet_pb2.DesiredState | None:
            for msg in self.probe.drain(0.1):
                self.latest = fleet_pb2.DesiredState.FromString(msg.payload)
            if self.latest is not None and self.latest.generation >= generation:
                return self.latest
            return None

        return wait_for(newest, timeout, 0.05)

    def report_active(self, name: str, version: str, digest: str) -> None:
        msg = fleet_pb2.ReportedState(
            device_id=self.id,
            models=[
                fleet_pb2.ReportedModel(
                    name=name, version=version, package_digest=digest, active=True
                )
            ],
        )
        topic = topics.device_topic(self.id, topics.REPORTED)
        self.probe.publish(topic, msg.SerializeToString(), retain=True)


def test_patch_capture_reaches_devices_without_a_rollout_and_rollback_keeps_it(
    control_plane: ControlPlane, package_factory: Any
) -> None:
    cp = control_plane
    d1 = cp.upload(package_factory("1.0.0")).json()["digest"]
    d2 = cp.upload(package_factory("2.0.0")).json()["digest"]
    cam = Device(cp, "cam")
    body = {
        "type": "edge",
        "name": "cams",
        "models": [{"model": "tiny", "version": "1.0.0"}],
        "targets": {"device_ids": [cam.id]},
        "capture": {"below_confidence": 0.4, "dataset": "cams-review"},
    }
    r = cp.api.post("/api/v1/services", json=body)
    assert r.status_code == 201, r.text
    first = cam.desired(1)
    [model] = first.models
    assert model.package_digest == d1
    assert model.capture.enabled and abs(model.capture.below_confidence - 0.4) < 1e-9

    # A new block: the same deployment and version, a newer generation, the new policy; no
    # new rollout, and the dataset (the control plane's part) stays out of the device's policy.
    r = cp.api.patch(
        "/api/v1/services/cams",
        json={"capture": {"on_request": True, "sample_fraction": 0.25, "dataset": "other"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["capture"]["dataset"] == "other"
    second = cam.desired(first.generation + 1)
    [model] = second.models
    assert model.package_digest == d1 and model.deployment_id == first.models[0].deployment_id
    assert model.capture.on_request and abs(model.capture.sample_fraction - 0.25) < 1e-9
    assert model.capture.below_confidence == 0
    service = _service(cp, "cams")
    assert service["rollout"]["number"] == 1
    assert service["capture"] == {
        "enabled": True,
        "below_confidence": 0.0,
        "sample_fraction": 0.25,
        "on_disagreement": False,
        "on_request": True,
        "top_k": 0,
        "dataset": "other",
    }

    # A rollout of version 2 carries the new block; rolling it back re-activates version 1
    # with the block too (before, the version a device went back to lost it).
    cam.report_active("tiny", "1.0.0", d1)
    wait_for(
        lambda: (cp.api.get(f"/api/v1/devices/{cam.id}").json()["reported"] or {}).get("models")
    )
    r = cp.api.patch(
        "/api/v1/services/cams", json={"models": [{"model": "tiny", "version": "2.0.0"}]}
    )
    assert r.status_code == 200, r.text
    third = cam.desired(second.generation + 1)
    assert [(m.package_digest, m.capture.on_request) for m in third.models] == [(d2, True)]
    r = cp.api.post("/api/v1/services/cams/rollout/rollback")
    assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
    fourth = cam.desired(third.generation + 1)
    [model] = [m for m in fourth.models if not m.standby]
    assert model.package_digest == d1
    assert model.capture.on_request and abs(model.capture.sample_fraction - 0.25) < 1e-9


def test_patch_needs_models_or_capture(control_plane: ControlPlane, package_factory: Any) -> None:
    cp = control_plane
    cp.upload(package_factory("1.0.0"))
    cam = Device(cp, "cam")
    r = cp.api.post(
        "/api/v1/services",
        json={
            "type": "edge",
            "name": "cams",
            "models": [{"model": "tiny", "version": "1.0.0"}],
            "targets": {"device_ids": [cam.id]},
        },
    )
    assert r.status_code == 201, r.text
    r = cp.api.patch("/api/v1/services/cams", json={})
    assert r.status_code == 422 and "models, capture, or both" in r.text
    r = cp.api.patch("/api/v1/services/cams", json={"capture": {"below_confidence": 2}})
    assert r.status_code == 422, r.text
    # A misspelt field is refused: taken as absent, it would reset the whole block to defaults.
    r = cp.api.patch("/api/v1/services/cams", json={"capture": {"below_confidnce": 0.5}})
    assert r.status_code == 422 and "below_confidnce" in r.text, r.text
    assert _service(cp, "cams")["capture"] is None
    # Turning capture on for a service created without it works the same way.
    first = cam.desired(1)
    assert not first.models[0].HasField("capture")
    r = cp.api.patch("/api/v1/services/cams", json={"capture": {"below_confidence": 0.3}})
    assert r.status_code == 200, r.text
    second = cam.desired(first.generation + 1)
    assert abs(second.models[0].capture.below_confidence - 0.3) < 1e-9
