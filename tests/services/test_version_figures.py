"""Per-version figures of a service from its replicas' metrics records, worked out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.services.version_figures import MetricsRecord, version_figures


def _rec(device: str, seq: int, versions: dict[str, Any]) -> MetricsRecord:
    return MetricsRecord(
        device, seq, None, {"edge_agent_requests_total": 1.0, "versions": versions}
    )


def test_figures_add_counts_and_keep_the_slowest_latency() -> None:
    records = [
        # replica 0: version 1 only, then version 2 after a rolling update (1 no longer named).
        _rec(
            "r0",
            1,
            {"m": {"1": {"requests": 40, "errors": 2, "window": 38, "p50_ms": 2.0, "p99_ms": 9.0}}},
        ),
        _rec(
            "r0",
            2,
            {"m": {"1": {"requests": 50, "errors": 2, "window": 10, "p50_ms": 3.0, "p99_ms": 8.0}}},
        ),
        _rec(
            "r0",
            3,
            {"m": {"2": {"requests": 10, "errors": 1, "window": 9, "p50_ms": 4.0, "p99_ms": 12.0}}},
        ),
        # replica 1: version 2 busy, then a quiet interval (window 0: no percentiles).
        _rec(
            "r1",
            7,
            {
                "m": {
                    "2": {"requests": 20, "errors": 0, "window": 20, "p50_ms": 5.0, "p99_ms": 10.0}
                }
            },
        ),
        _rec("r1", 8, {"m": {"2": {"requests": 20, "errors": 0, "window": 0}}}),
        # a record without versions (an older agent) and junk are ignored
        MetricsRecord("r1", 9, None, {"edge_agent_requests_total": 3.0}),
        MetricsRecord("r1", 10, None, {"versions": {"m": ["not", "an", "object"]}}),
    ]
    # Given out of order: the newest record per replica still wins.
    v1, v2 = version_figures(list(reversed(records)), serving={"m": "2"})

    assert (v1.model, v1.version, v1.serving) == ("m", "1", False)
    assert (v1.requests, v1.errors) == (50, 2)
    assert v1.error_rate == pytest.approx(2 / 50)
    assert (v1.p50_ms, v1.p99_ms) == (3.0, 8.0)  # r0's newest window

    assert (v2.version, v2.serving, v2.requests, v2.errors) == ("2", True, 30, 1)
    assert v2.error_rate == pytest.approx(1 / 30)
    # r1's quiet interval keeps its earlier window; the slowest replica gives each percentile.
    assert [(r.device_id, r.window, r.p50_ms, r.p99_ms) for r in v2.replicas] == [
        ("r0", 9, 4.0, 12.0),
        ("r1", 20, 5.0, 10.0),
    ]
    assert (v2.p50_ms, v2.p99_ms) == (5.0, 12.0)

    # Compared with the version served now: 1 against 2.
    assert v2.vs_baseline is None
    assert v1.vs_baseline is not None and v1.vs_baseline.baseline == "2"
    assert v1.vs_baseline.error_rate_delta == pytest.approx(2 / 50 - 1 / 30)
    assert v1.vs_baseline.p50_ratio == pytest.approx(3.0 / 5.0)
    assert v1.vs_baseline.p99_ratio == pytest.approx(8.0 / 12.0)

    # Another baseline on request.
    v1, v2 = version_figures(records, serving={"m": "2"}, baseline="1")
    assert v1.vs_baseline is None and v2.vs_baseline is not None
    assert v2.vs_baseline.p99_ratio == pytest.approx(12.0 / 8.0)


def test_no_records_no_figures() -> None:
    assert version_figures([], serving={"m": "1"}) == []
    (only,) = version_figures(
        [_rec("r0", 1, {"m": {"1": {"requests": 0, "errors": 0, "window": 0}}})], {}
    )
    assert (only.requests, only.error_rate, only.p50_ms, only.serving) == (0, None, None, False)


def test_several_versions_served_with_their_weights() -> None:
    records = [
        _rec("r0", 1, {"m": {"1": {"requests": 90, "errors": 0}, "2": {"requests": 10}}}),
        _rec("r0", 2, {"m": {"3": {"requests": 5, "errors": 0}}}),
    ]
    weights = {("m", "1"): 90, ("m", "2"): 10}
    v1, v2, v3 = version_figures(records, serving={"m": "1"}, weights=weights)
    assert [(v.version, v.serving, v.weight) for v in (v1, v2, v3)] == [
        ("1", True, 90),
        ("2", True, 10),
        ("3", False, None),
    ]
    # The active (first listed) version stays the baseline of the others.
    assert v1.vs_baseline is None and v2.vs_baseline is not None
    assert v2.vs_baseline.baseline == "1"
