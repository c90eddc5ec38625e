"""End to end through the real control plane and Mosquitto: deployments reach real agents."""

from __future__ import annotations

from tests.fleet.conftest import Fleet, Packages
from tests.fleet.helpers import serving, wait_serving


def test_two_agents_one_deployment(fleet: Fleet, packages: Packages, start_fleet_agent) -> None:
    bundles = [fleet.register(f"cam-{i}", {"site": "north"}) for i in range(2)]
    agents = [start_fleet_agent(b).start() for b in bundles]
    for a in agents:
        assert serving(a.address, packages.models) == "v1"
    digest = fleet.upload(packages.v2)
    dep = fleet.deploy(digest, selector={"site": "north"})

    targets = fleet.wait_final(dep, ["cam-0", "cam-1"])
    for device_id, agent in zip(["cam-0", "cam-1"], agents, strict=True):
        assert targets[device_id]["state"] == "installed", targets[device_id]
        wait_serving(agent.address, packages.models, "v2", timeout=5)
        device = fleet.device(device_id)
        assert device["status"] == "online"
        reported = device["reported"]
        active = [m for m in reported["models"] if m["active"]]
        assert [(m["name"], m["version"], m["package_digest"]) for m in active] == [
            ("mlp", "2", digest)
        ]
        assert active[0]["variant"]
        assert reported["last_result"]["outcome"] == "INSTALLED"
        assert reported["desired_generation"] == "1"  # uint64 in the protobuf JSON mapping
        assert reported["agent_version"]
    # Both pulled at once: chunks went once on the package's shared topic for the two of them.
    counts = fleet.app.state.fleet.fanout.counts
    assert counts["shared"] > 0, counts
