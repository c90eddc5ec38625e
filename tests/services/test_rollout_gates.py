"""Health gates read from stored telemetry (real SQLite, the telemetry service's own storage).

Metrics records as devices send them: per model version, requests and errors counted since the
version was loaded, and the p99 of the window since the previous record. The stage started at
sequence number 2 on each device; the previous version's p99 comes from the records before.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.core.context import AppContext
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import IncomingRecord, TelemetryService
from control_plane.services.rollouts import gates
from control_plane.services.schemas import HealthGates


def _metrics(versions: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"versions": {"m": versions}})


def _stage(ctx: AppContext, figures: dict[str, list[dict[str, dict[str, Any]]]]) -> dict:
    """Devices with records 1.. (record 1 before the stage), online, previous version 1."""
    with ctx.sessions() as session:
        for device_id, records in figures.items():
            DeviceService(session, ctx).register(device_id, {}, device_id)
            DeviceService(session, ctx).record_status(device_id, "online")
            TelemetryService(session, ctx).record_batch(
                device_id,
                [
                    IncomingRecord(seq, "metrics", 0, _metrics(v))
                    for seq, v in enumerate(records, start=1)
                ],
                0,
            )
    return {
        "devices": sorted(figures),
        "seq0": {d: 1 for d in figures},
        "previous": {d: {"version": "1", "package_digest": "x"} for d in figures},
    }


def _health(ctx: AppContext, stage: dict, baked: bool, **limits: Any) -> gates.Verdict:
    with ctx.sessions() as session:
        return gates.health(session, ctx, "m", "2", stage, HealthGates(**limits), baked)


BEFORE = {"1": {"requests": 500, "errors": 0, "window": 100, "p99_ms": 2.0}}


def test_slow_version_fails_against_the_previous_one_on_the_same_devices(ctx: AppContext) -> None:
    slow = {"2": {"requests": 30, "errors": 0, "window": 30, "p99_ms": 9.0}}
    stage = _stage(ctx, {"a": [BEFORE, slow], "b": [BEFORE, slow]})
    verdict = _health(ctx, stage, baked=False, max_p99_ratio=3.0)
    assert verdict.state == "fail"
    ratio = next(r for r in verdict.results if r["gate"] == "p99_ratio")
    assert (ratio["passed"], ratio["value"], ratio["limit"]) == (False, 9.0, 6.0)
    assert "previous version p99 2 ms" in ratio["detail"]
    assert verdict.reason == "gate p99_ratio failed: 9 > 6 (previous version p99 2 ms)"


def test_counts_since_the_stage_and_the_end_of_the_bake(ctx: AppContext) -> None:
    # Device a held version 2 before (40 requests, 4 errors): only what came after counts.
    held = {**BEFORE, "2": {"requests": 40, "errors": 4, "window": 0}}
    after = {"2": {"requests": 140, "errors": 5, "window": 100, "p99_ms": 3.0}}
    fresh = {"2": {"requests": 100, "errors": 1, "window": 100, "p99_ms": 2.5}}
    stage = _stage(ctx, {"a": [held, after], "b": [BEFORE, fresh]})
    waiting = _health(ctx, stage, baked=False, max_error_rate=0.05, max_p99_ms=5.0)
    assert waiting.state == "wait"  # clean so far, not baked yet
    rate = next(r for r in waiting.results if r["gate"] == "error_rate")
    assert rate["value"] == 0.01 and rate["detail"] == "2/200 requests failed"
    assert _health(ctx, stage, baked=True, max_error_rate=0.05, max_p99_ms=5.0).state == "pass"
    assert _health(ctx, stage, baked=True, min_requests=500).state == "wait"  # not enough yet
    assert _health(ctx, stage, baked=True, max_error_rate=0.005).state == "fail"


def test_an_offline_device_fails_the_stage(ctx: AppContext) -> None:
    stage = _stage(ctx, {"a": [BEFORE], "b": [BEFORE]})
    with ctx.sessions() as session:
        DeviceService(session, ctx).record_status("b", "offline")
    verdict = _health(ctx, stage, baked=True)
    assert verdict.state == "fail" and verdict.reason == "gate online failed: 1 of 2 (offline: b)"
