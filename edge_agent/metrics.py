"""Prometheus metrics of the agent, in one registry so tests and embedders can read them."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

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


METRICS = AgentMetrics()
