"""Cut an edge service's target devices into stages: a canary, then cumulative waves.

Devices are taken in id order, so the same targets always give the same stages (and a restarted
control plane re-plans nothing: the plan is stored with the rollout).
"""

from __future__ import annotations

import math
from typing import Any

from control_plane.services.schemas import RolloutStrategy, parse_share


def _count(share: int | str, total: int) -> int:
    count, fraction = parse_share(share)
    return count if count else math.ceil(fraction * total)


def stages(devices: list[str], strategy: RolloutStrategy) -> list[dict[str, Any]]:
    """``[{"name", "devices", "state": "pending", ...}]``; every device in exactly one stage."""
    ordered = sorted(set(devices))
    total = len(ordered)
    cuts = [min(total, max(1, _count(strategy.canary, total)))]
    for wave in strategy.waves:
        cut = min(total, _count(wave, total))
        if cut > cuts[-1]:
            cuts.append(cut)
    if cuts[-1] < total:
        cuts.append(total)
    out, start = [], 0
    for i, cut in enumerate(cuts):
        out.append(new_stage("canary" if i == 0 else f"wave-{i}", ordered[start:cut]))
        start = cut
    return out


def new_stage(name: str, devices: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "devices": list(devices),
        "state": "pending",
        "deployment_id": "",
        "previous": {},
        "seq0": {},
        "started_at": None,
        "baking_since": None,
        "gates": [],
        "rollback_deployments": [],
    }
