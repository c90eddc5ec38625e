"""Health gates of a rollout stage, read from the stage's devices and their telemetry.

Devices send a ``metrics`` record every ``telemetry_interval_s`` with, per model version, the
requests and errors counted since the version was loaded and the p99 latency of the successful
requests since the previous record (``edge_agent/fleet/client.py``, ``VersionTelemetry``). A
stage remembers each device's telemetry sequence number when it started (``seq0``), so "since
the stage started" is "records after seq0" and the version's counts are the latest record's
minus the last one before the stage (a held version re-activated keeps its earlier counts).

Gates: ``installs`` (every device installed the version), ``online`` (every device still
online), ``error_rate``, ``p99_ms``, ``p99_ratio`` (against the previous version's p99 on the
same devices before the stage), and ``traffic`` (at least ``min_requests`` answered). While the
stage bakes, the error rate is judged once the stage has answered ``EARLY_REQUESTS`` requests
(or ``min_requests``, if more), latency once as many are in its windows; at the end of the bake
on whatever there is. A breach stops the stage at once instead of waiting out the bake, and one
unlucky request cannot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.services.schemas import HealthGates

#: Requests before error rate and p99 are judged ahead of the end of the bake.
EARLY_REQUESTS = 20
#: Telemetry records read back before a stage's start, for the previous version's p99.
LOOKBACK_RECORDS = 50


@dataclass
class Verdict:
    state: str  # pass | fail | wait
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        failed = [r for r in self.results if not r["passed"]]
        return "; ".join(_describe(r) for r in failed)


def _describe(r: dict[str, Any]) -> str:
    text = f"gate {r['gate']} failed"
    if r.get("value") is not None and r.get("limit") is not None:
        # Counts of devices (installs, online) fall short of the limit; figures go above it.
        relation = "of" if r["gate"] in ("installs", "online") else ">"
        text += f": {r['value']:g} {relation} {r['limit']:g}"
    return text + (f" ({r['detail']})" if r.get("detail") else "")


def _result(
    gate: str,
    passed: bool,
    value: float | None = None,
    limit: float | None = None,
    detail: str = "",
) -> dict[str, Any]:
    return {"gate": gate, "passed": passed, "value": value, "limit": limit, "detail": detail}


def installs(session: Session, ctx: AppContext, stage: dict[str, Any]) -> Verdict:
    """The stage's deployment: pass once every device installed it, fail when one failed."""
    targets = {
        t.device_id: t for t in DeploymentService(session, ctx).get(stage["deployment_id"]).targets
    }
    devices = stage["devices"]
    failed = [d for d in devices if d in targets and targets[d].state == "failed"]
    done = [d for d in devices if d not in targets or targets[d].state == "installed"]
    if failed:
        why = ", ".join(f"{d}: {targets[d].step}: {targets[d].reason}" for d in failed)
        return Verdict("fail", [_result("installs", False, len(done), len(devices), why)])
    if len(done) < len(devices):
        return Verdict("wait")
    return Verdict("pass", [_result("installs", True, len(done), len(devices))])


@dataclass
class _Figures:
    requests: int = 0
    errors: int = 0
    window: int = 0
    p99s: list[float] = field(default_factory=list)
    previous_p99s: list[float] = field(default_factory=list)


def _metrics(session: Session, ctx: AppContext, device_id: str, seq0: int) -> list[tuple]:
    rows = TelemetryService(session, ctx).list(
        device_id, after_seq=max(0, seq0 - LOOKBACK_RECORDS), limit=10_000
    )
    out = []
    for r in rows:
        if r.kind != "metrics":
            continue
        try:
            versions = json.loads(r.payload).get("versions", {})
        except (ValueError, AttributeError):
            continue
        out.append((r.seq, versions if isinstance(versions, dict) else {}))
    return out


def _figures(
    session: Session, ctx: AppContext, model: str, version: str, stage: dict[str, Any]
) -> _Figures:
    f = _Figures()
    for device in stage["devices"]:
        seq0 = int(stage["seq0"].get(device, 0))
        previous = (stage["previous"].get(device) or {}).get("version")
        base: dict[str, Any] = {}
        latest: dict[str, Any] | None = None
        for seq, versions in _metrics(session, ctx, device, seq0):
            mine = versions.get(model, {}).get(version)
            if seq <= seq0:
                if mine:
                    base = mine
                prev = versions.get(model, {}).get(previous) if previous else None
                if prev and prev.get("p99_ms") is not None:
                    f.previous_p99s.append(float(prev["p99_ms"]))
                continue
            if not mine:
                continue
            latest = mine
            f.window += int(mine.get("window", 0))
            if mine.get("p99_ms") is not None:
                f.p99s.append(float(mine["p99_ms"]))
        if latest is not None:
            requests, errors = int(latest.get("requests", 0)), int(latest.get("errors", 0))
            if requests >= int(base.get("requests", 0)):  # else: reloaded since, counts restarted
                requests -= int(base.get("requests", 0))
                errors -= int(base.get("errors", 0))
            f.requests += requests
            f.errors += max(0, errors)
    f.previous_p99s = f.previous_p99s[-3 * max(1, len(stage["devices"])) :]
    return f


def health(
    session: Session,
    ctx: AppContext,
    model: str,
    version: str,
    stage: dict[str, Any],
    gates: HealthGates,
    baked: bool,
) -> Verdict:
    """The stage's gates while it bakes: fail at the first breach, pass once baked and clean."""
    results = []
    devices = DeviceService(session, ctx)
    if gates.require_online:
        offline = [
            d
            for d in stage["devices"]
            if (dev := devices.find(d)) is None or dev.status != "online"
        ]
        online = len(stage["devices"]) - len(offline)
        results.append(
            _result(
                "online",
                not offline,
                online,
                len(stage["devices"]),
                f"offline: {', '.join(offline)}" if offline else "",
            )
        )
    f = _figures(session, ctx, model, version, stage)
    early = max(EARLY_REQUESTS, gates.min_requests)
    if f.requests >= (max(1, gates.min_requests) if baked else early):
        rate = f.errors / f.requests
        results.append(
            _result(
                "error_rate",
                rate <= gates.max_error_rate,
                round(rate, 4),
                gates.max_error_rate,
                f"{f.errors}/{f.requests} requests failed",
            )
        )
    judge_latency = f.p99s and (baked or f.window >= early)
    worst = max(f.p99s) if f.p99s else None
    if judge_latency and worst is not None and gates.max_p99_ms is not None:
        results.append(_result("p99_ms", worst <= gates.max_p99_ms, worst, gates.max_p99_ms))
    if judge_latency and worst is not None and gates.max_p99_ratio is not None:
        if f.previous_p99s:
            limit = round(gates.max_p99_ratio * max(f.previous_p99s), 3)
            detail = f"previous version p99 {max(f.previous_p99s):g} ms"
            results.append(_result("p99_ratio", worst <= limit, worst, limit, detail))
        else:
            results.append(
                _result("p99_ratio", True, worst, None, "no previous figures to compare")
            )
    if any(not r["passed"] for r in results):
        return Verdict("fail", results)
    if not baked:
        return Verdict("wait", results)
    if f.requests < gates.min_requests:
        results.append(
            _result("traffic", True, f.requests, gates.min_requests, "waiting for enough requests")
        )
        return Verdict("wait", results)
    return Verdict("pass", results)
