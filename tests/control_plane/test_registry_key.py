"""The registry's signing key exists from the control plane's start and survives restarts.

A device registered before any model must be able to install what the registry converts later:
its bundle carries the key from the start, and the package verifies through the same path the
agent's installer uses (bundle PEMs written to files, ``TrustStore.from_paths``,
``verify_package``). A restarted control plane hands new devices the same key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.settings import DEFAULT_SECRET, Settings
from edge_agent.fleet.bundle import config_from_bundle
from model_packager.archive import verify_package
from model_packager.errors import PackageError
from model_packager.signing import TrustStore, generate_keypair

API = "/api/v1"


def _settings(data: Path, **extra: Any) -> Settings:
    return Settings(data_dir=data, dev_mode=True, embedded_broker_port=0, **extra)


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {DEFAULT_SECRET}"})


def _register_device(api: TestClient, name: str) -> dict[str, Any]:
    r = api.post(f"{API}/devices", json={"name": name})
    assert r.status_code == 201, r.text
    bundle: dict[str, Any] = r.json()["bundle"]
    return bundle


def _wait_ready(api: TestClient, name: str, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mv = api.get(f"{API}/models/{name}/versions/{version}").json()
        if mv["state"] != "converting":
            assert mv["state"] == "ready", mv["error"]
            return
        time.sleep(0.3)
    raise AssertionError(f"model {name} {version} still converting after {timeout}s")


def _device_trust(bundle: dict[str, Any], folder: Path) -> TrustStore:
    """What the agent does with its bundle: PEMs to files, then the installer's trust store."""
    config = config_from_bundle(bundle, folder)
    return TrustStore.from_paths([Path(p) for p in config["trusted_keys"]])


def test_device_registered_first_installs_registry_packages_across_restarts(
    tmp_path: Path, models_dir: Path
) -> None:
    settings = _settings(tmp_path / "data")
    with _client(settings) as api:
        early = _register_device(api, "early")  # before any model exists
        assert len(early["trusted_keys_pem"]) == 1
        with open(models_dir / "mlp.onnx", "rb") as f:
            r = api.post(
                f"{API}/models/import",
                files={"file": ("mlp.onnx", f)},
                data={"name": "mlp", "targets": '["onnx-fp32"]'},
            )
        assert r.status_code == 202, r.text
        _wait_ready(api, "mlp", "1")
        r = api.get(f"{API}/models/mlp/versions/1/package")
        assert r.status_code == 200
        package = tmp_path / "mlp.edgepkg"
        package.write_bytes(r.content)

    _, key_id = verify_package(package, _device_trust(early, tmp_path / "early-keys"))

    # A restart loads the same key: a device registered now trusts the same packages.
    with _client(_settings(tmp_path / "data")) as api:
        late = _register_device(api, "late")
    assert late["trusted_keys_pem"] == early["trusted_keys_pem"]
    assert verify_package(package, _device_trust(late, tmp_path / "late-keys"))[1] == key_id

    # And the check is real: a device trusting some other key refuses the package.
    other = tmp_path / "other"
    generate_keypair(other / "k.key", other / "k.pub")
    with pytest.raises(PackageError, match="not trusted"):
        verify_package(package, TrustStore.from_paths([other / "k.pub"]))


def test_configured_key_must_exist_outside_dev_mode(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api_token="t" * 32,
        mqtt_password="p" * 32,
        embedded_broker_port=0,
        signing_key=tmp_path / "missing.key",
    )
    with pytest.raises(Exception, match=r"missing\.key, which does not exist"), _client(settings):
        pass
