"""Edge services rolled out in stages to real agents, through the real control plane and Mosquitto.

Agents send per-version telemetry every 0.3 s; bake times are a second or two. The misbehaving
version is a real ONNX model that passes its golden vectors (two rows) but fails on the one-row
requests the traffic sends, as a model can that was only checked on the inputs it was built with.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key
from tests.agent.agent_process import AgentProcess
from tests.agent.install_checks import committed_state
from tests.control_plane.conftest import Keys, wait_for
from tests.fleet.conftest import Fleet, Packages
from tests.fleet.helpers import download_stats, serving, wait_serving

TELEMETRY_S = 0.3


@pytest.fixture(scope="module")
def fixed_batch_v3(
    models_dir: Path, fleet_keys: dict[str, Keys], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """mlp 3: v2's weights behind a Reshape to exactly two rows (its golden vectors have two)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(models_dir / "mlp_v2.onnx"))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([2, 784], np.int64), "two_rows"))
    for node in graph.node:
        node.input[:] = ["input_2rows" if i == "input" else i for i in node.input]
    graph.node.insert(0, helper.make_node("Reshape", ["input", "two_rows"], ["input_2rows"]))
    out = tmp_path_factory.mktemp("v3")
    onnx.save(model, str(out / "mlp_v3.onnx"))
    spec = BuildSpec(name="mlp", version="3", artifacts=[ArtifactInput(path=out / "mlp_v3.onnx")])
    return build_package(spec, out, load_private_key(fleet_keys["trusted"].private))


def one_row(address: str) -> bool:
    """One single-row request (the shape real traffic has here); True when it succeeded."""
    import tritonclient.grpc as tc
    import tritonclient.utils as tu

    client = tc.InferenceServerClient(url=address)
    try:
        inp = tc.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(np.ones((1, 784), np.float32))
        client.infer("mlp", [inp], client_timeout=20)
        return True
    except tu.InferenceServerException:
        return False
    finally:
        client.close()


class Traffic:
    """A thread sending single-row requests to every agent in turn until stopped."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        self.agents = agents
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for a in self.agents:
                one_row(a.address)
            self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _agents(
    fleet: Fleet, start: Callable[..., AgentProcess], ids: list[str], labels: dict[str, str]
) -> list[AgentProcess]:
    bundles = [fleet.register(d, labels) for d in ids]
    return [start(b, telemetry_interval_s=TELEMETRY_S).start() for b in bundles]


def _service(fleet: Fleet, name: str) -> dict[str, Any]:
    r = fleet.api.get(f"/api/v1/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_rollout(fleet: Fleet, name: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    def done() -> dict[str, Any] | None:
        rollout = _service(fleet, name)["rollout"]
        return rollout if rollout["state"] in states else None

    try:
        return dict(wait_for(done, timeout, 0.2))
    except AssertionError:
        raise AssertionError(f"rollout not {states}: {_service(fleet, name)}") from None


def _create(fleet: Fleet, body: dict[str, Any]) -> dict[str, Any]:
    r = fleet.api.post("/api/v1/services", json={"type": "edge", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _created_at(fleet: Fleet, deployment_id: str) -> dt.datetime:
    r = fleet.api.get(f"/api/v1/deployments/{deployment_id}")
    return dt.datetime.fromisoformat(r.json()["created_at"])


@pytest.fixture
def four(fleet: Fleet, packages: Packages, start_fleet_agent) -> Iterator[list[AgentProcess]]:
    fleet.upload(packages.v1)
    yield _agents(fleet, start_fleet_agent, [f"edge-{i}" for i in range(4)], {"site": "a"})


def test_canary_one_of_four_then_all(fleet: Fleet, packages: Packages, four) -> None:
    fleet.upload(packages.v2)
    ids = [f"edge-{i}" for i in range(4)]
    _create(
        fleet,
        {
            "name": "cams",
            "models": [{"model": "mlp", "version": "2"}],
            "targets": {"device_ids": ids},
            "strategy": {"canary": 1, "waves": ["100%"], "bake_s": 1.5},
            "gates": {"max_error_rate": 0.0},
        },
    )
    baking = wait_for(
        lambda: (r := _service(fleet, "cams")["rollout"])["stages"][0]["state"] == "baking" and r,
        30,
        0.1,
    )
    assert baking["stages"][0]["devices"] == ["edge-0"]
    assert baking["stages"][1]["devices"] == ["edge-1", "edge-2", "edge-3"]
    assert baking["stages"][1]["state"] == "pending"
    assert serving(four[1].address, packages.models) == "v1"  # the wave waits for the bake

    with Traffic(four):
        rollout = _wait_rollout(fleet, "cams", ("succeeded", "failed"))
    assert rollout["state"] == "succeeded", rollout
    for agent in four:
        wait_serving(agent.address, packages.models, "v2", timeout=5)
    canary, wave = rollout["stages"]
    assert canary["previous"] == {"edge-0": "1"}
    assert {g["gate"]: g["passed"] for g in canary["gates"]} == {
        "installs": True,
        "online": True,
        "error_rate": True,
    }
    assert set(wave["device_states"].values()) == {"installed"}
    gap = _created_at(fleet, wave["deployment_id"]) - _created_at(fleet, canary["deployment_id"])
    assert gap.total_seconds() >= 1.5
    service = _service(fleet, "cams")
    assert service["state"] == "running"

    # Manual rollback: every device still holds version 1, so it is re-activated, no download.
    downloads = [len(download_stats(a.log())) for a in four]
    assert fleet.api.post("/api/v1/services/cams/rollout/pause").status_code == 409
    r = fleet.api.post("/api/v1/services/cams/rollout/rollback")
    assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
    for agent in four:
        wait_serving(agent.address, packages.models, "v1", timeout=10)
    assert [len(download_stats(a.log())) for a in four] == downloads
    assert _service(fleet, "cams")["state"] == "rolled_back"


def test_a_version_failing_on_real_traffic_stops_at_the_canary(
    fleet: Fleet, packages: Packages, fixed_batch_v3: Path, four
) -> None:
    fleet.upload(fixed_batch_v3)
    ids = [f"edge-{i}" for i in range(4)]
    with Traffic(four):
        _create(
            fleet,
            {
                "name": "cams",
                "models": [{"model": "mlp", "version": "3"}],
                "targets": {"device_ids": ids},
                "strategy": {"canary": "25%", "waves": ["50%", "100%"], "bake_s": 30},
                "gates": {"max_error_rate": 0.05, "min_requests": 5},
            },
        )
        rollout = _wait_rollout(fleet, "cams", ("failed", "succeeded"))
        assert rollout["state"] == "failed", rollout
        wait_serving(four[0].address, packages.models, "v1", timeout=5)
    canary = rollout["stages"][0]
    assert canary["state"] == "rolled_back" and canary["devices"] == ["edge-0"]
    gate = next(g for g in canary["gates"] if g["gate"] == "error_rate")
    assert not gate["passed"] and gate["value"] > 0.05 and gate["limit"] == 0.05
    assert "requests failed" in gate["detail"]
    assert rollout["reason"].startswith("canary: gate error_rate failed")
    assert [s["state"] for s in rollout["stages"][1:]] == ["pending", "pending"]
    service = _service(fleet, "cams")
    assert service["state"] == "failed" and "error_rate" in service["reason"]
    # The canary re-activated the version it held; the others never received version 3.
    assert committed_state(four[0].workdir)["models"]["mlp"]["active"] == "1"
    for agent in four[1:]:
        assert set(committed_state(agent.workdir)["models"]["mlp"]["versions"]) == {"1"}
    history = fleet.api.get("/api/v1/services/cams/rollouts").json()
    assert [h["state"] for h in history] == ["failed"]


def test_device_joining_the_selector_gets_what_its_stage_allows(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    fleet.upload(packages.v1)
    fleet.upload(packages.v2)
    agents = _agents(fleet, start_fleet_agent, ["site-0", "site-1"], {"site": "b"})
    _create(
        fleet,
        {
            "name": "siteb",
            "models": [{"model": "mlp", "version": "2"}],
            "targets": {"selector": {"site": "b"}},
            "strategy": {"canary": 1, "waves": ["100%"], "bake_s": 3},
        },
    )
    wait_for(lambda: _service(fleet, "siteb")["rollout"]["stages"][0]["state"] == "baking", 30)
    late = _agents(fleet, start_fleet_agent, ["site-late"], {"site": "b"})[0]
    joined = wait_for(
        lambda: "site-late" in (r := _service(fleet, "siteb")["rollout"])["joined"] and r, 10, 0.1
    )
    assert "site-late" in joined["stages"][1]["devices"]  # queued in the wave, not the canary
    assert serving(late.address, packages.models) == "v1"
    rollout = _wait_rollout(fleet, "siteb", ("succeeded", "failed"))
    assert rollout["state"] == "succeeded", rollout
    for agent in [*agents, late]:
        wait_serving(agent.address, packages.models, "v2", timeout=5)

    # After the rollout a newcomer gets the rolled-out version at once; a device relabelled out
    # of the selector leaves and has the service's version removed (back on the one it held).
    newest = _agents(fleet, start_fleet_agent, ["site-new"], {"site": "b"})[0]
    wait_serving(newest.address, packages.models, "v2", timeout=30)
    r = fleet.api.patch("/api/v1/devices/site-0", json={"labels": {"site": "elsewhere"}})
    assert r.status_code == 200 and r.json()["labels"] == {"site": "elsewhere"}, r.text
    wait_serving(agents[0].address, packages.models, "v1", timeout=30)
    assert set(committed_state(agents[0].workdir)["models"]["mlp"]["versions"]) == {"1"}
    assert _service(fleet, "siteb")["rollout"]["left"] == ["site-0"]


def test_a_local_guard_revert_during_the_bake_fails_the_stage_at_once(
    fleet: Fleet, packages: Packages, fixed_batch_v3: Path, four
) -> None:
    """The cloud's gates are lenient and the bake long: only the device's guard can stop it."""
    fleet.upload(fixed_batch_v3)
    _create(
        fleet,
        {
            "name": "guarded",
            "models": [{"model": "mlp", "version": "3"}],
            "targets": {"device_ids": ["edge-0"]},
            "strategy": {"canary": 1, "waves": [], "bake_s": 600},
            "gates": {"max_error_rate": 1.0, "min_requests": 1},
            "guard": {"bake_s": 120, "max_error_rate": 0.05, "min_requests": 5},
        },
    )
    # No traffic until the stage bakes, so the guard breaches during the bake, not before it.
    wait_for(lambda: _service(fleet, "guarded")["rollout"]["stages"][0]["state"] == "baking", 30)
    with Traffic(four[:1]):
        rollout = _wait_rollout(fleet, "guarded", ("failed", "succeeded"), timeout=60)
        wait_serving(four[0].address, packages.models, "v1", timeout=5)
    assert rollout["state"] == "failed", rollout
    canary = rollout["stages"][0]
    assert canary["state"] == "rolled_back"
    gate = next(g for g in canary["gates"] if g["gate"] == "installs")
    assert not gate["passed"] and "edge-0: guard:" in gate["detail"], gate
    assert rollout["reason"].startswith("canary: gate installs failed")
