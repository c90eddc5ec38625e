"""kill -9 of the control plane in the middle of a staged rollout: it resumes where it was.

The control plane runs as ``control-plane serve`` on a SQLite file (the stack the fleet scripts
use, ``scripts/fleet_stack.py``) with a real Mosquitto and real agents. It is killed while the
canary bakes; meanwhile every device keeps serving; started again, it carries on from the row
(the canary's deployment is not redone) and finishes the rollout.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import Keys, free_port, wait_for
from tests.fleet.conftest import Packages, fleet_section
from tests.fleet.helpers import serving, wait_serving

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fleet_stack


@pytest.fixture
def stack(tmp_path: Path, fleet_keys: dict[str, Keys]) -> Iterator[fleet_stack.Stack]:
    s = fleet_stack.Stack(
        work=tmp_path,
        broker_port=free_port(),
        api_port=free_port(),
        api_token=secrets.token_hex(16),
        mqtt_password=secrets.token_hex(16),
        trusted_pub=fleet_keys["trusted"].public,
        cp_extra_env={"CONTROL_PLANE_ROLLOUT_TICK_S": "0.2", "CONTROL_PLANE_CHUNK_SIZE": "65536"},
    )
    try:
        fleet_stack.start_broker(s)
        fleet_stack.start_control_plane(s)
        yield s
    finally:
        fleet_stack.kill_hard(s.cp)
        s.close()


def _rollout(stack: fleet_stack.Stack) -> dict[str, Any]:
    return dict(stack.call("GET", "/services/cams")["rollout"])


def test_kill_9_mid_rollout_resumes(
    stack: fleet_stack.Stack,
    packages: Packages,
    fleet_keys: dict[str, Keys],
    v1_data_dir: Path,
    tmp_path: Path,
) -> None:
    agents: list[AgentProcess] = []
    try:
        _run(stack, packages, fleet_keys, v1_data_dir, tmp_path, agents)
    finally:
        for agent in agents:
            agent.stop()


def _run(
    stack: fleet_stack.Stack,
    packages: Packages,
    fleet_keys: dict[str, Keys],
    v1_data_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    for i in range(3):
        bundle = fleet_stack.register(stack, f"k-{i}", {"site": "k"})
        fleet_stack.wait_credentials(stack, bundle)
        shutil.copytree(v1_data_dir, tmp_path / f"agent-{i}" / "data")
        agent = AgentProcess(
            tmp_path / f"agent-{i}",
            [fleet_keys["trusted"].public],
            device_id=bundle["device_id"],
            fleet=fleet_section(bundle, telemetry_interval_s=0.3),
        )
        agents.append(agent.start())
    fleet_stack.upload(stack, packages.v1)
    fleet_stack.upload(stack, packages.v2)
    body = {
        "name": "cams",
        "type": "edge",
        "models": [{"model": "mlp", "version": "2"}],
        "targets": {"selector": {"site": "k"}},
        "strategy": {"canary": 1, "waves": ["100%"], "bake_s": 4},
    }
    stack.call("POST", "/services", json=body)
    baking = wait_for(lambda: (r := _rollout(stack))["stages"][0]["state"] == "baking" and r, 30)
    canary_deployment = baking["stages"][0]["deployment_id"]

    fleet_stack.kill_hard(stack.cp)
    # Nobody is left without a working model: the canary on 2, the others on 1.
    wait_serving(agents[0].address, packages.models, "v2", timeout=10)
    assert [serving(a.address, packages.models) for a in agents[1:]] == ["v1", "v1"]

    fleet_stack.start_control_plane(stack)
    rollout = wait_for(lambda: (r := _rollout(stack))["state"] != "running" and r, 60, 0.2)
    assert rollout["state"] == "succeeded", rollout
    assert rollout["stages"][0]["deployment_id"] == canary_deployment  # resumed, not redone
    for agent in agents:
        wait_serving(agent.address, packages.models, "v2", timeout=10)
    deployments = stack.call("GET", "/deployments")
    assert len(deployments) == 2  # the canary's and the wave's
