"""Explicit activation through the real control plane and Mosquitto, on real agents.

A rollback to a version the device still holds is a re-activation (no chunk pulled); a standby
version takes its weight of the traffic and can be uninstalled remotely; the local guard reverts
a misbehaving version by itself while the broker is down and reports it once the broker is back;
an offline bundle shows as installed out of band and the desired state does not undo it; a
shadow warm-up activates only a version whose answers agree with the live one's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key
from tests.agent.install_checks import committed_state, infer_logits
from tests.control_plane.conftest import Keys, wait_for
from tests.fleet.conftest import Fleet, Packages
from tests.fleet.helpers import download_stats, serving, wait_serving


def _bad_request(address: str) -> None:
    """A request the active version rejects (wrong shape): an error counted against it."""
    import tritonclient.grpc as tc
    import tritonclient.utils as tu

    client = tc.InferenceServerClient(url=address)
    try:
        inp = tc.InferInput("input", [1, 5], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5), np.float32))
        with pytest.raises(tu.InferenceServerException):
            client.infer("mlp", [inp], client_timeout=20)
    finally:
        client.close()


def test_rollback_to_a_held_version_reactivates_it_without_download(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    agent = start_fleet_agent(fleet.register("cam-rb")).start()
    v1, v2 = fleet.upload(packages.v1), fleet.upload(packages.v2)
    dep2 = fleet.deploy(v2, device_id="cam-rb")
    assert fleet.wait_final(dep2, ["cam-rb"])["cam-rb"]["state"] == "installed"
    wait_serving(agent.address, packages.models, "v2", timeout=5)
    downloads = len(download_stats(agent.log()))
    assert downloads == 1

    back = fleet.deploy(v1, device_id="cam-rb")
    target = fleet.wait_final(back, ["cam-rb"], timeout=10)["cam-rb"]
    assert (target["state"], target["step"]) == ("installed", "activate")
    wait_serving(agent.address, packages.models, "v1", timeout=5)
    assert len(download_stats(agent.log())) == downloads  # nothing pulled
    state = committed_state(agent.workdir)["models"]["mlp"]
    assert state["active"] == "1" and set(state["versions"]) == {"1", "2"}

    # Forward again: v2 is held too, so the same holds the other way.
    fwd = fleet.deploy(v2, device_id="cam-rb")
    assert fleet.wait_final(fwd, ["cam-rb"], timeout=10)["cam-rb"]["step"] == "activate"
    wait_serving(agent.address, packages.models, "v2", timeout=5)
    assert len(download_stats(agent.log())) == downloads


def test_standby_weight_then_remote_uninstall(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    agent = start_fleet_agent(fleet.register("cam-sb")).start()
    v2 = fleet.upload(packages.v2)
    r = fleet.api.post(
        "/api/v1/deployments",
        json={"package_digest": v2, "device_id": "cam-sb", "standby": True, "weight": 50},
    )
    assert r.status_code == 201, r.text
    assert fleet.wait_final(r.json()["id"], ["cam-sb"])["cam-sb"]["state"] == "installed"
    state = committed_state(agent.workdir)["models"]["mlp"]
    assert state["active"] == "1" and set(state["versions"]) == {"1", "2"}
    want = {"v1": infer_logits(agent.address, version="1")}
    want["v2"] = infer_logits(agent.address, version="2")

    def answered_by(logits: np.ndarray) -> str:
        return next(k for k, v in want.items() if np.allclose(v, logits, atol=1e-4))

    seen = [answered_by(infer_logits(agent.address)) for _ in range(10)]
    assert seen.count("v1") == 5 and seen.count("v2") == 5  # smooth round-robin: exact

    # A weight without standby is refused with the reason; nothing is recorded.
    bad = fleet.api.post(
        "/api/v1/deployments", json={"package_digest": v2, "device_id": "cam-sb", "weight": 10}
    )
    assert bad.status_code == 422 and "standby" in bad.text

    rm = fleet.api.post(
        "/api/v1/deployments",
        json={"package_digest": v2, "device_id": "cam-sb", "action": "remove"},
    )
    assert rm.status_code == 201, rm.text
    assert fleet.wait_final(rm.json()["id"], ["cam-sb"], timeout=10)["cam-sb"]["state"] == (
        "removed"
    )
    assert set(committed_state(agent.workdir)["models"]["mlp"]["versions"]) == {"1"}
    assert {answered_by(infer_logits(agent.address)) for _ in range(4)} == {"v1"}

    def reported_versions() -> set[str] | None:
        models = fleet.device("cam-sb")["reported"]["models"]
        got = {m["version"] for m in models}
        return got if got == {"1"} else None

    wait_for(reported_versions, 10, 0.2)


def test_local_guard_reverts_with_the_broker_down_and_reports_later(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    agent = start_fleet_agent(fleet.register("cam-guard")).start()
    v2 = fleet.upload(packages.v2)
    guard = {"bake_s": 120, "max_error_rate": 0.2, "min_requests": 4}
    r = fleet.api.post(
        "/api/v1/deployments", json={"package_digest": v2, "device_id": "cam-guard", "guard": guard}
    )
    assert r.status_code == 201, r.text
    dep = r.json()["id"]
    assert fleet.wait_final(dep, ["cam-guard"])["cam-guard"]["state"] == "installed"
    wait_serving(agent.address, packages.models, "v2", timeout=5)

    fleet.stop_broker()
    infer_logits(agent.address)
    for _ in range(4):
        _bad_request(agent.address)  # 4 of 5 fail: far above 0.2
    wait_serving(agent.address, packages.models, "v1", timeout=5)
    assert committed_state(agent.workdir)["models"]["mlp"]["active"] == "1"
    assert fleet.targets(dep)["cam-guard"]["state"] == "installed"  # nothing reached it yet

    fleet.start_broker()
    target = wait_for(
        lambda: (t := fleet.targets(dep)["cam-guard"])["state"] == "failed" and t, 30, 0.2
    )
    assert target["step"] == "guard"
    # The figures: failures against every request v2 answered since its activation, judged
    # from the 4th request on (min_requests), so the breach may come before all 4 failures.
    found = re.match(r"error rate (0\.\d+) > 0\.2 \((\d+)/(\d+) requests failed", target["reason"])
    assert found, target["reason"]
    failed, total = int(found[2]), int(found[3])
    assert total >= 4 and failed / total > 0.2
    assert float(found[1]) == pytest.approx(failed / total, abs=1e-3)
    assert target["reason"].endswith("reverted to version 1")
    assert serving(agent.address, packages.models) == "v1"


def test_offline_bundle_is_reported_out_of_band_and_not_fought(
    fleet: Fleet,
    packages: Packages,
    start_fleet_agent,
    models_dir: Path,
    fleet_keys: dict[str, Keys],
    tmp_path: Path,
) -> None:
    agent = start_fleet_agent(fleet.register("cam-usb")).start()
    v2 = fleet.upload(packages.v2)
    dep = fleet.deploy(v2, device_id="cam-usb")
    assert fleet.wait_final(dep, ["cam-usb"])["cam-usb"]["state"] == "installed"
    agent.stop()

    # A USB stick: version 4 (v1's weights), signed by a trusted key, never uploaded.
    spec = BuildSpec(
        name="mlp", version="4", artifacts=[ArtifactInput(path=models_dir / "mlp.onnx")]
    )
    bundle = build_package(spec, tmp_path, load_private_key(fleet_keys["trusted"].private))
    cmd = [sys.executable, "-m", "edge_agent.cli", "install", "--offline", str(bundle)]
    done = subprocess.run(
        [*cmd, "--config", str(agent.config_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr

    agent.start()  # reconnects; the retained desired state still names version 2

    def reported() -> list[dict[str, Any]] | None:
        models = fleet.api.get("/api/v1/deployments/devices/cam-usb/models").json()
        return models if any(m["version"] == "4" for m in models) else None

    models = {m["version"]: m for m in wait_for(reported, 20, 0.2)}
    assert models["4"]["active"] and models["4"]["out_of_band"]
    assert models["4"]["deployment_id"] is None
    assert all(m["out_of_band"] == (m["deployment_id"] is None) for m in models.values())
    assert [m["version"] for m in models.values() if m["active"]] == ["4"]
    assert serving(agent.address, packages.models) == "v1"  # version 4 serves: not fought


def _random_rows(address: str, rng: np.random.Generator) -> None:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url=address)
    try:
        x = rng.standard_normal((4, 784)).astype(np.float32)
        inp = tc.InferInput("input", [4, 784], "FP32")
        inp.set_data_from_numpy(x)
        client.infer("mlp", [inp], client_timeout=20)
    finally:
        client.close()


def test_shadow_warmup_activates_only_a_version_that_agrees(
    fleet: Fleet,
    packages: Packages,
    start_fleet_agent,
    models_dir: Path,
    fleet_keys: dict[str, Keys],
    tmp_path: Path,
) -> None:
    agent = start_fleet_agent(fleet.register("cam-shadow")).start()
    stop = threading.Event()

    def traffic() -> None:
        rng = np.random.default_rng(7)
        while not stop.is_set():
            _random_rows(agent.address, rng)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    warmup = {"fraction": 1.0, "min_requests": 10, "min_agreement": 0.9, "timeout_s": 30}
    try:
        # Version 2 has other weights: on random inputs its top-1 rarely matches version 1's.
        r = fleet.api.post(
            "/api/v1/deployments",
            json={"package_digest": fleet.upload(packages.v2), "device_id": "cam-shadow"}
            | {"warmup": warmup},
        )
        assert r.status_code == 201, r.text
        target = fleet.wait_final(r.json()["id"], ["cam-shadow"])["cam-shadow"]
        assert (target["state"], target["step"]) == ("failed", "shadow"), target
        assert "top-1 agreement" in target["reason"] and "< 0.9" in target["reason"]
        state = committed_state(agent.workdir)["models"]["mlp"]
        assert state["active"] == "1" and "2" in state["versions"]  # held, not active

        # Version 5 is version 1's model under another number: it agrees, so it is activated.
        spec = BuildSpec(
            name="mlp", version="5", artifacts=[ArtifactInput(path=models_dir / "mlp.onnx")]
        )
        v5 = build_package(spec, tmp_path, load_private_key(fleet_keys["trusted"].private))
        r = fleet.api.post(
            "/api/v1/deployments",
            json={"package_digest": fleet.upload(v5), "device_id": "cam-shadow"}
            | {"warmup": warmup},
        )
        target = fleet.wait_final(r.json()["id"], ["cam-shadow"])["cam-shadow"]
        assert target["state"] == "installed", target
        assert committed_state(agent.workdir)["models"]["mlp"]["active"] == "5"
    finally:
        stop.set()
        thread.join(10)
