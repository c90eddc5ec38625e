"""Per model version request figures in the periodic ``metrics`` telemetry record.

One agent on a real broker, reporting to the real control plane, serves two versions of one
model; the records read back from the control plane's telemetry API must count exactly the
requests and errors sent to each version. Unit checks cover the percentiles and the record's
size bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.fleet import codec
from edge_agent.fleet.client import MAX_SNAPSHOT_VERSIONS, VersionTelemetry
from edge_agent.fleet.outbox import Outbox
from edge_agent.serving.stats import (
    LATENCY_BOUNDS_NS,
    LatencyHistogram,
    ModelStats,
    RequestTiming,
    quantile_ms,
)
from tests.agent.agent_process import AgentProcess
from tests.agent.install_checks import infer_logits
from tests.control_plane.conftest import wait_for
from tests.fleet.conftest import Fleet, Packages


def _bad_request(address: str, version: str) -> None:
    """A request the agent rejects (wrong shape): an error counted against ``version``."""
    import tritonclient.grpc as tc
    import tritonclient.utils as tu

    client = tc.InferenceServerClient(url=address)
    try:
        inp = tc.InferInput("input", [1, 5], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5), np.float32))
        with pytest.raises(tu.InferenceServerException):
            client.infer("mlp", [inp], model_version=version, client_timeout=20)
    finally:
        client.close()


def test_snapshot_counts_each_version(
    fleet: Fleet, packages: Packages, start_fleet_agent: Callable[..., AgentProcess]
) -> None:
    bundle = fleet.register("cam-versions")
    device_id = bundle["device_id"]
    agent = start_fleet_agent(bundle, telemetry_interval_s=0.3).start()
    assert agent.install(packages.v2).result.outcome == "COMMITTED"  # 1 stays loaded
    for _ in range(3):
        infer_logits(agent.address, version="1")
    for _ in range(5):
        infer_logits(agent.address, version="2")
    infer_logits(agent.address)  # the active version: 2
    _bad_request(agent.address, "1")
    _bad_request(agent.address, "1")

    def versions() -> list[dict[str, Any]] | None:
        rows = fleet.api.get(f"/api/v1/devices/{device_id}/telemetry").json()
        payloads = [json.loads(r["payload"]) for r in rows if r["kind"] == "metrics"]
        last = payloads[-1]["versions"].get("mlp", {}) if payloads else {}
        done = last.get("1", {}).get("requests") == 5 and last.get("2", {}).get("requests") == 6
        return [p["versions"]["mlp"] for p in payloads] if done else None

    snapshots = wait_for(versions, timeout=30)
    last = snapshots[-1]
    assert {k: last["1"][k] for k in ("requests", "errors")} == {"requests": 5, "errors": 2}
    assert {k: last["2"][k] for k in ("requests", "errors")} == {"requests": 6, "errors": 0}
    # Each successful request is in exactly one snapshot's latency window.
    assert sum(s.get("1", {}).get("window", 0) for s in snapshots) == 3
    assert sum(s.get("2", {}).get("window", 0) for s in snapshots) == 6
    with_latency = [s["2"] for s in snapshots if s.get("2", {}).get("window")]
    assert with_latency
    for entry in with_latency:
        assert 0 < entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"] < 20_000
    # The registry's sums are still there, beside the per version figures.
    rows = fleet.api.get(f"/api/v1/devices/{device_id}/telemetry").json()
    payload = json.loads([r for r in rows if r["kind"] == "metrics"][-1]["payload"])
    assert payload["edge_agent_inference_requests_total"] == 11


# --- units ------------------------------------------------------------------------------------


def test_quantiles_from_buckets() -> None:
    h = LatencyHistogram()
    for ms in [1.0] * 90 + [10.0] * 9 + [100.0]:
        h.observe(int(ms * 1e6))
    assert quantile_ms(h.counts, 0.5) == pytest.approx(1.0, rel=0.1)
    assert quantile_ms(h.counts, 0.9) == pytest.approx(1.0, rel=0.1)
    assert quantile_ms(h.counts, 0.99) == pytest.approx(10.0, rel=0.1)
    assert quantile_ms(h.counts, 1.0) == pytest.approx(100.0, rel=0.1)
    assert quantile_ms([0] * len(h.counts), 0.5) == 0.0
    h.observe(10**15)  # beyond the last bound: the open bucket
    assert quantile_ms(h.counts, 1.0) == LATENCY_BOUNDS_NS[-1] / 1e6


class _Served:
    def __init__(self, name: str, version: str, stats: ModelStats) -> None:
        self.name, self.version, self.stats = name, version, stats


def _stats(ok: int, failed: int) -> ModelStats:
    st = ModelStats()
    for i in range(ok):
        st.request_succeeded(1_000_000 + i * 1000, 0, RequestTiming(), 1)
    for _ in range(failed):
        st.request_failed(1000)
    return st


def test_windows_and_reloads() -> None:
    vt = VersionTelemetry()
    st = _stats(4, 1)
    served: list[Any] = [_Served("m", "1", st)]
    first = vt.snapshot(served)["versions"]["m"]["1"]
    assert (first["requests"], first["errors"], first["window"]) == (5, 1, 4)
    assert first["p50_ms"] == pytest.approx(1.0, rel=0.1)
    idle = vt.snapshot(served)["versions"]["m"]["1"]
    assert idle == {"requests": 5, "errors": 1, "window": 0}  # no percentiles of nothing
    st.request_succeeded(2_000_000, 0, RequestTiming(), 1)
    assert vt.snapshot(served)["versions"]["m"]["1"]["window"] == 1
    # Unloaded and loaded again: new statistics, a new window (never a negative count).
    reloaded: list[Any] = [_Served("m", "1", _stats(2, 0))]
    again = vt.snapshot(reloaded)["versions"]["m"]["1"]
    assert (again["requests"], again["errors"], again["window"]) == (2, 0, 2)


def test_snapshot_stays_within_the_record_budget(tmp_path: Path) -> None:
    vt = VersionTelemetry()
    served: list[Any] = [
        _Served(f"model-with-a-long-name-{i:04d}", f"2026.11.{v}", _stats(3 + i % 7, i % 2))
        for i in range(150)
        for v in range(2)
    ]
    payload = vt.snapshot(served)
    assert sum(len(v) for v in payload["versions"].values()) == MAX_SNAPSHOT_VERSIONS
    assert payload["versions_omitted"] == 300 - MAX_SNAPSHOT_VERSIONS
    # The busiest versions are the ones kept.
    counts = sorted((m.stats.success.count + m.stats.fail.count for m in served), reverse=True)
    kept = min(e["requests"] for v in payload["versions"].values() for e in v.values())
    assert kept == counts[MAX_SNAPSHOT_VERSIONS - 1]
    budget = codec.telemetry_payload_budget(
        "a-device-id-of-sixty-four-characters-" + "x" * 27, "metrics"
    )
    size = len(json.dumps(payload, separators=(",", ":")))
    assert size < budget / 4, (size, budget)
    # Through the real outbox: stored as is, not shrunk.
    box = Outbox(tmp_path / "outbox.sqlite3", 10)
    box.append("metrics", payload, max_payload_bytes=budget)
    (rec,) = box.oldest(1)
    assert "_truncated" not in json.loads(rec.payload_json)
    box.close()
