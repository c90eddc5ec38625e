"""Explicit activation through the real control plane and Mosquitto, on real agents.

A rollback to a version the device still holds is a re-activation (no chunk pulled); a standby
version takes its weight of the traffic and can be uninstalled remotely; the local guard reverts
a misbehaving version by itself while the broker is down and reports it once the broker is back.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.agent.install_checks import committed_state, infer_logits
from tests.control_plane.conftest import wait_for
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
    # The figures: the 4 failures against every request v2 answered since its activation.
    found = re.match(r"error rate (0\.\d+) > 0\.2 \(4/(\d+) requests failed", target["reason"])
    assert found, target["reason"]
    assert float(found[1]) == pytest.approx(4 / int(found[2]), abs=1e-3)
    assert target["reason"].endswith("reverted to version 1")
    assert serving(agent.address, packages.models) == "v1"
