"""Edge service plans and checks that need no device: stage cuts, request validation, the
device guard's breach rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control_plane.services.rollouts.plan import stages
from control_plane.services.schemas import RolloutStrategy, ServiceCreate
from edge_agent.fleet.guard import Figures, breach
from protos.fleet_state import LocalGuard

DEVICES = [f"d{i}" for i in range(8)]


def _sizes(**strategy: object) -> list[int]:
    return [len(s["devices"]) for s in stages(DEVICES, RolloutStrategy(**strategy))]


def test_canary_then_cumulative_waves() -> None:
    assert _sizes(canary=1, waves=["50%", "100%"]) == [1, 3, 4]
    assert _sizes(canary="25%", waves=[4]) == [2, 2, 4]  # the last wave always ends with all
    assert _sizes(canary=20) == [8]  # a canary larger than the fleet is the fleet
    assert _sizes(canary=2, waves=[1, "50%"]) == [2, 2, 4]  # a wave not past the total: skipped
    plan = stages(list(reversed(DEVICES)), RolloutStrategy(canary=1))
    assert plan[0]["devices"] == ["d0"] and plan[0]["state"] == "pending"
    assert sorted(d for s in plan for d in s["devices"]) == DEVICES


@pytest.mark.parametrize("share", [0, "0%", "150%", "ten", "-1"])
def test_bad_shares_are_refused(share: object) -> None:
    with pytest.raises(ValidationError):
        RolloutStrategy(canary=share)  # type: ignore[arg-type]


def test_edge_fields_belong_to_edge_services() -> None:
    model = [{"model": "m", "version": "1"}]
    with pytest.raises(ValidationError, match="needs targets"):
        ServiceCreate(name="e", type="edge", models=model)
    with pytest.raises(ValidationError, match="exactly one"):
        ServiceCreate(
            name="e",
            type="edge",
            models=model,
            targets={"device_ids": ["a"], "selector": {"k": "v"}},
        )
    with pytest.raises(ValidationError, match="edge services only"):
        ServiceCreate(name="o", type="online", models=model, strategy={"canary": 1})
    two = [*model, {"model": "n", "version": "1"}]
    with pytest.raises(ValidationError, match="one model version"):
        ServiceCreate(name="e", type="edge", models=two, targets={"device_ids": ["a"]})


def test_guard_breach_needs_enough_requests_and_names_the_limit() -> None:
    guard = LocalGuard(bake_s=10, max_error_rate=0.1, max_p99_ms=50, min_requests=5)
    assert breach(guard, Figures(requests=4, errors=4, p99_ms=None)) == ""  # too few to judge
    assert breach(guard, Figures(requests=10, errors=1, p99_ms=20.0)) == ""
    assert breach(guard, Figures(requests=10, errors=2, p99_ms=20.0)) == "error rate 0.200 > 0.1"
    assert breach(guard, Figures(requests=10, errors=0, p99_ms=80.0)) == "p99 80.0 ms > 50 ms"
