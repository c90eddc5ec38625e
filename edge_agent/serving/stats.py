"""Per model version inference statistics, in the shape of Triton's statistics extension.

Prometheus metrics (``metrics.py``) answer "how is the fleet doing"; these answer a client's
question "where does my request's time go" through the protocol itself (``ModelStatistics`` on
gRPC, ``GET /v2/models/{name}/stats`` on HTTP), which perf_analyzer-style tools read. Each
``ServedModel`` owns one ``ModelStats``: unloading a version drops its figures, and a restart
starts from zero, as in Triton ("since the server started").

Everything is recorded on the event loop (the inference thread only returns its timestamps), so
plain integer counters need no lock. Request-level figures (success, fail, queue, compute_*)
count requests; ``execution_count`` and ``batch_stats`` count model runs, which the dynamic
batcher makes fewer than requests. ``latency`` keeps successful requests' latencies in fixed
buckets, so the fleet's telemetry can report percentiles per version (Triton's sums give only
means, and the Prometheus histogram is per model) at the cost of one bisect per request.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field

#: Distinct batch sizes itemised in ``batch_stats``; a client sending every size from 1 to
#: 10 000 must not grow the table without bound. Executions of further sizes still count in
#: ``execution_count`` and ``inference_stats``.
MAX_BATCH_SIZES = 64


@dataclass(slots=True)
class Duration:
    """Triton's ``StatisticDuration``: how many times, and nanoseconds in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(ns, 0)


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class RequestTiming:
    """Where one request's time went inside the served model (nanoseconds)."""

    queue_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


#: Upper bounds (ns) of the latency buckets: 2**(1/4) apart (a percentile read from them is within
#: ~10% of the true figure) from 25 us to about 2 minutes, plus one open bucket above.
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(round(25_000 * 2 ** (i / 4)) for i in range(90))


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of request latencies per bucket of ``LATENCY_BOUNDS_NS`` (last: above them all)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_NS) + 1))

    def observe(self, ns: int) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS_NS, ns)] += 1


def quantile_ms(counts: list[int], q: float) -> float:
    """The ``q`` quantile (0..1) of bucket ``counts`` in milliseconds: the geometric middle of
    the bucket holding it (the upper bound for the first bucket, the lower for the open one)."""
    n = sum(counts)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n))
    i, seen = 0, counts[0]
    while seen < rank:
        i += 1
        seen += counts[i]
    if i == 0:
        ns = float(LATENCY_BOUNDS_NS[0])
    elif i >= len(LATENCY_BOUNDS_NS):
        ns = float(LATENCY_BOUNDS_NS[-1])
    else:
        ns = math.sqrt(LATENCY_BOUNDS_NS[i - 1] * LATENCY_BOUNDS_NS[i])
    return ns / 1e6


@dataclass(slots=True)
class ShadowStats:
    """How a shadow candidate's answers compare with the live version's (``traffic.py``).

    Kept on the candidate version, like its other figures. ``rows`` / ``agreed_rows`` count
    top-1 agreement over outputs with classes (a last dimension over 1); ``max_abs_diff`` is the
    largest element difference seen on any compared output, for regressors and classifiers alike.
    """

    #: Requests mirrored to the candidate and compared.
    compared: int = 0
    #: Requests that were due a shadow run but found the candidate busy (bounded, never queued).
    skipped: int = 0
    #: Shadow runs that raised, or whose outputs did not match the live ones in name or shape.
    failed: int = 0
    rows: int = 0
    agreed_rows: int = 0
    max_abs_diff: float = 0.0

    def record(self, rows: int, agreed: int, max_abs_diff: float) -> None:
        self.compared += 1
        self.rows += rows
        self.agreed_rows += agreed
        self.max_abs_diff = max(self.max_abs_diff, max_abs_diff)


@dataclass(slots=True)
class ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    shadow: ShadowStats = field(default_factory=ShadowStats)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def request_succeeded(
        self, total_ns: int, input_ns: int, timing: RequestTiming, rows: int
    ) -> None:
        """A successful request: ``total_ns`` from arrival (decoding included) to its result,
        ``input_ns`` spent decoding, validating and pre-processing, ``rows`` inferences."""
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.inference_count += rows
        self.success.add(total_ns)
        self.latency.observe(total_ns)
        self.compute_input.add(input_ns)
        self.queue.add(timing.queue_ns)
        self.compute_infer.add(timing.infer_ns)
        self.compute_output.add(timing.output_ns)

    def request_failed(self, total_ns: int) -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.fail.add(total_ns)

    def executed(self, batch_size: int, infer_ns: int) -> None:
        """One run of the model over ``batch_size`` rows (one request, or a dynamic batch)."""
        self.execution_count += 1
        b = self.batches.get(batch_size)
        if b is None:
            if len(self.batches) >= MAX_BATCH_SIZES:
                return
            b = self.batches[batch_size] = BatchStats()
        b.compute_infer.add(infer_ns)
