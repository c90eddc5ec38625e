"""Per model version request figures of a service, from its replicas' ``metrics`` telemetry.

Every replica (an agent) sends a ``metrics`` record each ``telemetry_interval_s`` whose
``versions`` object holds, per model and version it has loaded, ``requests`` and ``errors``
(cumulative since that version was loaded there) and the p50 / p90 / p99 latency of the
successful requests of the last interval (``window`` of them). Pure: records in, figures out, so
the arithmetic is tested without agents.

For each version and replica the newest record naming it gives its counts, and the newest one
whose window held requests gives its latency (a quiet last interval does not erase what was
measured before). Over replicas, counts add up; latency percentiles cannot be added, so a
version's ``p50_ms`` / ``p99_ms`` are the slowest replica's: the figure a health gate must
respect. A version that is no longer loaded keeps the figures of its last records, so an old
version can still be compared with the new one after a rolling update.

Comparison: each version against a baseline version of the same model (by default the one the
service serves now): the error-rate difference (points of rate) and the latency ratios.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from control_plane.services.schemas import (
    ReplicaVersionFigures,
    VersionComparison,
    VersionFigures,
)


@dataclass(frozen=True)
class MetricsRecord:
    """One stored ``metrics`` telemetry record of one replica."""

    device_id: str
    seq: int
    at: dt.datetime | None
    payload: dict[str, Any]


def version_figures(
    records: Iterable[MetricsRecord],
    serving: dict[str, str],
    baseline: str | None = None,
    weights: dict[tuple[str, str], int | None] | None = None,
) -> list[VersionFigures]:
    """Figures per (model, version), sorted by model then version, each compared with the
    baseline version of its model (``baseline``, else the version ``serving[model]``).

    ``weights`` names every version the spec serves (with its weight, or None), for a service
    serving several versions of a model; without it only ``serving[model]`` is served."""
    in_spec = weights if weights is not None else {(m, v): None for m, v in serving.items()}
    newest: dict[tuple[str, str, str], tuple[int, dict[str, Any], dt.datetime | None]] = {}
    timed: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (r.device_id, r.seq)):
        versions = rec.payload.get("versions")
        if not isinstance(versions, dict):
            continue
        for model, by_version in versions.items():
            if not isinstance(by_version, dict):
                continue
            for version, entry in by_version.items():
                if not isinstance(entry, dict):
                    continue
                key = (str(model), str(version), rec.device_id)
                newest[key] = (rec.seq, entry, rec.at)
                if int(entry.get("window", 0) or 0) > 0:
                    timed[key] = entry

    replicas: dict[tuple[str, str], list[ReplicaVersionFigures]] = {}
    for (model, version, device_id), (_, entry, at) in sorted(newest.items()):
        latency = timed.get((model, version, device_id), {})
        replicas.setdefault((model, version), []).append(
            ReplicaVersionFigures(
                device_id=device_id,
                requests=int(entry.get("requests", 0)),
                errors=int(entry.get("errors", 0)),
                window=int(latency.get("window", 0)),
                p50_ms=_number(latency.get("p50_ms")),
                p99_ms=_number(latency.get("p99_ms")),
                at=at,
            )
        )
    figures = {key: _combine(key, rows, in_spec) for key, rows in replicas.items()}
    for (model, _), fig in figures.items():
        base_version = baseline or serving.get(model)
        base = figures.get((model, base_version)) if base_version else None
        if base is not None and base is not fig:
            fig.vs_baseline = _compare(fig, base)
    return [figures[k] for k in sorted(figures)]


def _combine(
    key: tuple[str, str],
    rows: list[ReplicaVersionFigures],
    in_spec: dict[tuple[str, str], int | None],
) -> VersionFigures:
    model, version = key
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    p50 = [r.p50_ms for r in rows if r.p50_ms is not None]
    p99 = [r.p99_ms for r in rows if r.p99_ms is not None]
    return VersionFigures(
        model=model,
        version=version,
        serving=key in in_spec,
        weight=in_spec.get(key),
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p50_ms=max(p50) if p50 else None,
        p99_ms=max(p99) if p99 else None,
        replicas=rows,
    )


def _compare(fig: VersionFigures, base: VersionFigures) -> VersionComparison:
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    delta = (
        fig.error_rate - base.error_rate
        if fig.error_rate is not None and base.error_rate is not None
        else None
    )
    return VersionComparison(
        baseline=base.version,
        error_rate_delta=delta,
        p50_ratio=ratio(fig.p50_ms, base.p50_ms),
        p99_ratio=ratio(fig.p99_ms, base.p99_ms),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
