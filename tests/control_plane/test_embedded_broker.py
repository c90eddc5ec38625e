"""Without a broker URL, `serve` runs an embedded broker on loopback and the fleet channel works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from control_plane.app import create_app
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import API_TOKEN, Keys, make_settings
from tests.control_plane.mqtt_probe import MqttProbe


def test_embedded_broker_serves_desired_state(
    tmp_path: Path, trusted_keys: Keys, package_factory: Any
) -> None:
    settings = make_settings(tmp_path, trusted_keys, embedded_broker_port=0)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
        assert app.state.fleet.connected.wait(5)
        url = app.state.ctx.broker_url
        assert url.startswith("mqtt://127.0.0.1:")
        reg = api.post("/api/v1/devices", json={"name": "dev"}).json()
        assert reg["bundle"]["mqtt"]["url"] == url
        device_id = reg["device"]["id"]
        with open(package_factory("1.0.0"), "rb") as f:
            digest = api.post("/api/v1/packages", files={"file": ("p", f)}).json()["digest"]
        dep = api.post(
            "/api/v1/deployments", json={"package_digest": digest, "device_id": device_id}
        )
        assert dep.status_code == 201

        probe = MqttProbe(int(url.rsplit(":", 1)[1]), device_id, reg["bundle"]["mqtt"]["password"])
        try:
            assert probe.connect()
            probe.subscribe(topics.device_topic(device_id, topics.DESIRED))
            msg = probe.expect_on(topics.device_topic(device_id, topics.DESIRED))
            state = fleet_pb2.DesiredState.FromString(msg.payload)
            assert state.models[0].package_digest == digest
        finally:
            probe.close()
