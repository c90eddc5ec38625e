"""Shadow warm-up: mirror live requests to a version before activating it, and compare.

The version is installed but not active. For the warm-up it becomes the model's shadow
(``serving/traffic.py``): a fraction of the requests that name no version also run on it after
the live answer is sent, and ``ShadowStats`` count how its answers compare (top-1 agreement over
rows with classes, largest element difference). The split the model had is put back afterwards,
pass or fail. A shadow run that raises counts as one disagreeing row: a version that fails on
live inputs must not pass because its failures left nothing to compare.
"""

from __future__ import annotations

import asyncio

from edge_agent.install.installer import Installer
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.traffic import TrafficSplit
from protos.fleet_state import ShadowWarmup

POLL_S = 0.1


async def warm_up(
    installer: Installer, repo: ModelRepository, name: str, version: str, w: ShadowWarmup
) -> tuple[bool, str]:
    """(passed, the figures as a sentence)."""
    stats = repo.get(name, version).stats.shadow
    c0, f0, r0, a0 = stats.compared, stats.failed, stats.rows, stats.agreed_rows
    before = repo.traffic(name)
    weights = {v: x for v, x in before.weights.items() if v != version}
    await installer.set_traffic(
        name, TrafficSplit(weights, shadow_version=version, shadow_fraction=w.fraction)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + w.timeout_s
    try:
        while (stats.compared - c0) + (stats.failed - f0) < w.min_requests:
            if loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_S)
    finally:
        loaded = {m.version for m in repo.versions(name)}
        restore = before
        for v in before.versions() - loaded:
            restore = restore.without(v)
        await installer.set_traffic(name, restore)
    compared, failed = stats.compared - c0, stats.failed - f0
    runs = compared + failed
    if runs < w.min_requests:
        return False, f"only {runs} of {w.min_requests} requests mirrored in {w.timeout_s:g} s"
    rows, agreed = stats.rows - r0 + failed, stats.agreed_rows - a0
    if rows:
        agreement = agreed / rows
        figures = (
            f"top-1 agreement {agreement:.3f} over {rows} rows of {runs} mirrored requests "
            f"({failed} failed)"
        )
        if agreement < w.min_agreement:
            return False, f"{figures} < {w.min_agreement:g}"
        return True, figures
    figures = f"largest difference {stats.max_abs_diff:.3g} over {runs} mirrored requests"
    if stats.max_abs_diff > w.max_abs_diff:
        return False, f"{figures} > {w.max_abs_diff:g}"
    return True, figures
