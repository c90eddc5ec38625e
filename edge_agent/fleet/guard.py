"""The device's local guard: after an activation, watch the new version and revert on a breach.

Health gates in the control plane need the broker; a device whose new version misbehaves while
the broker is unreachable would serve it for as long as the outage lasts. The guard works from
the version's own ``ModelStats`` (the figures the statistics extension reports), on the agent's
loop, with no network: during ``bake_s`` after the activation it checks, every ``CHECK_EVERY_S``,
the error rate and the p99 latency of what the version answered since it was activated, and on
the first breach the caller re-activates the previous version. A restart ends the watch (the
bake is not resumed: the agent comes back on whatever ``state.json`` names).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.stats import quantile_ms
from protos.fleet_state import LocalGuard

CHECK_EVERY_S = 0.2


@dataclass(frozen=True)
class Figures:
    """What the version did since the guard started watching it."""

    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        return (
            f"{self.errors}/{self.requests} requests failed "
            f"(error rate {self.error_rate:.3f}), p99 {p99}"
        )


class Watch:
    """Figures of one served version counted from the moment the watch starts."""

    def __init__(self, served: ServedModel) -> None:
        self.stats = served.stats
        self._ok0 = self.stats.success.count
        self._fail0 = self.stats.fail.count
        self._lat0 = list(self.stats.latency.counts)

    def figures(self) -> Figures:
        ok = self.stats.success.count - self._ok0
        fail = self.stats.fail.count - self._fail0
        window = [a - b for a, b in zip(self.stats.latency.counts, self._lat0, strict=True)]
        p99 = quantile_ms(window, 0.99) if sum(window) else None
        return Figures(ok + fail, fail, p99)


def breach(guard: LocalGuard, f: Figures) -> str:
    """Why the figures break the guard, or "" when they do not (yet)."""
    if f.requests < max(guard.min_requests, 1):
        return ""
    if f.error_rate > guard.max_error_rate:
        return f"error rate {f.error_rate:.3f} > {guard.max_error_rate:g}"
    if guard.max_p99_ms > 0 and f.p99_ms is not None and f.p99_ms > guard.max_p99_ms:
        return f"p99 {f.p99_ms:.1f} ms > {guard.max_p99_ms:g} ms"
    return ""


async def watch(guard: LocalGuard, served: ServedModel) -> tuple[str, Figures]:
    """Watch ``served`` for ``guard.bake_s``: (the breach or "", the figures at the end)."""
    w = Watch(served)
    loop = asyncio.get_running_loop()
    end = loop.time() + guard.bake_s
    while True:
        figures = w.figures()
        why = breach(guard, figures)
        if why or loop.time() >= end:
            return why, figures
        await asyncio.sleep(min(CHECK_EVERY_S, max(0.0, end - loop.time())))
