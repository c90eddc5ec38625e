"""Prometheus metrics of the agent, in one registry so tests and embedders can read them.

The agent keeps its own counters, gauges and histograms rather than prometheus_client: that
library's package imports its push gateway, WSGI/ASGI servers and urllib.request whatever one
uses (http.server, wsgiref, email ...), about 2 MB of resident memory on an agent whose budget
is 100 MB, and serves from a thread of its own. What the agent needs is small: labelled
counters, gauges and histograms, the text exposition format (0.0.4, which every Prometheus
reads) served by ``metrics_server.py`` on the event loop, and ``collect()`` /
``get_sample_value`` for the fleet's telemetry snapshot. Names, types, labels and samples are
the ones prometheus_client produced (``<counter>_total``, ``<histogram>_bucket{le=..}``,
``_count``, ``_sum``), so dashboards and scrapers see no difference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    """One metric as scraped: its name (without ``_total``), help, type and samples."""

    name: str
    documentation: str
    type: str
    samples: list[Sample]


def format_value(value: float) -> str:
    """Go's float formatting as Prometheus prints it: ``1.0``, ``0.0005``, ``+Inf``."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    if "e" in text:  # Go writes 1e+06, Python 1e6 / 1e-05
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{exponent.lstrip('+-').rjust(2, '0')}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class CounterValue:
    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._value += amount

    def get(self) -> float:
        return self._value


class GaugeValue:
    def __init__(self) -> None:
        self._value = 0.0
        self._fn: Callable[[], float] | None = None
        self._lock = threading.Lock()

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Read the value from ``fn`` at each scrape (e.g. a live in-flight count)."""
        self._fn = fn

    def get(self) -> float:
        return float(self._fn()) if self._fn is not None else self._value


class HistogramValue:
    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, bound in enumerate(self._bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break

    def get(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last one is +Inf, the total) and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        for i in range(1, len(counts)):
            counts[i] += counts[i - 1]
        return counts, total


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)


class _Metric(Generic[V]):
    """A metric with optional labels; ``labels(...)`` returns (and keeps) one child per value."""

    type = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: Registry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], V] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._children[()] = self._new()
        if registry is not None:
            registry.register(self)

    def _new(self) -> V:
        raise NotImplementedError

    def labels(self, *values: object) -> V:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._new())
        return child

    def _unlabelled(self) -> V:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._children[()]

    def _items(self) -> Iterator[tuple[dict[str, str], V]]:
        for key, child in list(self._children.items()):
            yield dict(zip(self.labelnames, key, strict=True)), child

    def collect(self) -> Family:
        raise NotImplementedError


class Counter(_Metric[CounterValue]):
    type = "counter"

    def _new(self) -> CounterValue:
        return CounterValue()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def collect(self) -> Family:
        samples = [Sample(f"{self.name}_total", lb, c.get()) for lb, c in self._items()]
        return Family(self.name, self.documentation, self.type, samples)


class Gauge(_Metric[GaugeValue]):
    type = "gauge"

    def _new(self) -> GaugeValue:
        return GaugeValue()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set_function(self, fn: Callable[[], float]) -> None:
        self._unlabelled().set_function(fn)

    def collect(self) -> Family:
        samples = [Sample(self.name, lb, g.get()) for lb, g in self._items()]
        return Family(self.name, self.documentation, self.type, samples)


class Histogram(_Metric[HistogramValue]):
    type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = _LAT_BUCKETS,
        registry: Registry | None = None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def collect(self) -> Family:
        samples: list[Sample] = []
        for lb, h in self._items():
            counts, total = h.get()
            for bound, count in zip(self.bounds, counts, strict=True):
                le = {**lb, "le": format_value(bound)}
                samples.append(Sample(f"{self.name}_bucket", le, float(count)))
            samples.append(Sample(f"{self.name}_count", lb, float(counts[-1])))
            samples.append(Sample(f"{self.name}_sum", lb, total))
        return Family(self.name, self.documentation, self.type, samples)


class Registry:
    """The agent's metrics, in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []  # type: ignore[type-arg]

    def register(self, metric: _Metric) -> None:  # type: ignore[type-arg]
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics.append(metric)

    def collect(self) -> Iterator[Family]:
        for metric in self._metrics:
            yield metric.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value by its exposed name and labels; None when there is none."""
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return sample.value
        return None

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format 0.0.4."""
        lines: list[str] = []
        for family in self.collect():
            exposed = f"{family.name}_total" if family.type == "counter" else family.name
            doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
            lines.append(f"# HELP {exposed} {doc}")
            lines.append(f"# TYPE {exposed} {family.type}")
            for s in family.samples:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
                name = f"{s.name}{{{labels}}}" if labels else s.name
                lines.append(f"{name} {format_value(s.value)}")
        return ("\n".join(lines) + "\n").encode()


@dataclass
class AgentMetrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "edge_agent_inference_requests",
            "Inference requests by model, version and gRPC status code.",
            ["model", "version", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "edge_agent_inference_seconds",
            "Server-side inference request latency.",
            ["model"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edge_agent_batch_rows",
            "Rows per executed dynamic batch.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.inflight = Gauge(
            "edge_agent_inflight_requests", "Inference requests in progress.", registry=r
        )
        self.installs = Counter(
            "edge_agent_installs", "Package installs by outcome.", ["outcome"], registry=r
        )
        self.models_ready = Gauge(
            "edge_agent_model_versions_ready", "Loaded, ready model versions.", registry=r
        )
        self.batch_jobs = Counter(
            "edge_agent_batch_jobs", "Batch jobs finished by state.", ["state"], registry=r
        )
        self.telemetry_truncated = Counter(
            "edge_agent_telemetry_truncated",
            "Telemetry records whose payload was shrunk to fit the protocol's batch size limit.",
            registry=r,
        )

        self.captures = Counter(
            "edge_agent_captures",
            "Captured samples handed to the background writer (queued), or skipped because its "
            "queue was full (queue_full).",
            ["outcome"],
            registry=r,
        )
        self.delta_updates = Counter(
            "edge_agent_delta_updates",
            "Packages from the fleet made by a delta update: from chunks installed packages hold "
            "plus chunks fetched by digest, instead of a whole download.",
            registry=r,
        )
        self.delta_reused_bytes = Counter(
            "edge_agent_delta_reused_bytes",
            "Package bytes delta updates took from chunks installed packages hold (not fetched).",
            registry=r,
        )
        self.delta_fetched_bytes = Counter(
            "edge_agent_delta_fetched_bytes",
            "Package bytes delta updates fetched by digest from the control plane (also those of "
            "a delta abandoned later).",
            registry=r,
        )
        self.delta_fallbacks = Counter(
            "edge_agent_delta_fallbacks",
            "Delta updates tried and not used, the package then pulled whole: too little of it "
            "held, or abandoned (index or chunk refused, a held chunk damaged on disk).",
            registry=r,
        )


METRICS = AgentMetrics()
