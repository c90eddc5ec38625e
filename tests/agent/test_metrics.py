"""The agent's own metrics: what a real Prometheus parser reads from them, and the port.

The exposition is checked with prometheus_client's parser (the reference implementation, a
test dependency only), and the metrics port with a real HTTP server on port 0.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.http.metrics_route import MAX_BODY, MetricsRoute, error_text
from edge_agent.http.server import HttpServer
from edge_agent.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry


def _registry() -> tuple[Registry, Counter, Gauge, Histogram]:
    r = Registry()
    c = Counter("demo_requests", "Requests.", ["model", "code"], registry=r)
    g = Gauge("demo_inflight", "In flight.", registry=r)
    h = Histogram("demo_seconds", "Latency.", ["model"], buckets=(0.1, 1.0), registry=r)
    return r, c, g, h


def test_exposition_reads_back_through_the_reference_parser() -> None:
    r, c, g, h = _registry()
    c.labels('m"1\\x\n', "OK").inc()
    c.labels('m"1\\x\n', "OK").inc(2)
    g.set_function(lambda: 3)
    for v in (0.05, 0.5, 7.0):
        h.labels("mlp").observe(v)
    families = {f.name: f for f in text_string_to_metric_families(r.exposition().decode())}

    assert families["demo_requests"].type == "counter"
    (sample,) = families["demo_requests"].samples
    assert sample.name == "demo_requests_total"
    assert sample.labels == {"model": 'm"1\\x\n', "code": "OK"} and sample.value == 3.0
    assert families["demo_inflight"].samples[0].value == 3.0
    hist = {(s.name, s.labels.get("le")): s.value for s in families["demo_seconds"].samples}
    assert hist[("demo_seconds_bucket", "0.1")] == 1.0
    assert hist[("demo_seconds_bucket", "1.0")] == 2.0  # cumulative
    assert hist[("demo_seconds_bucket", "+Inf")] == 3.0
    assert hist[("demo_seconds_count", None)] == 3.0
    assert hist[("demo_seconds_sum", None)] == pytest.approx(7.55)
    assert r.get_sample_value("demo_requests_total", {"model": 'm"1\\x\n', "code": "OK"}) == 3
    assert r.get_sample_value("demo_requests_total", {"model": "other", "code": "OK"}) is None


def test_misuse_is_refused() -> None:
    r, c, _, _ = _registry()
    with pytest.raises(ValueError, match="only go up"):
        c.labels("m", "OK").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("m")
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    with pytest.raises(ValueError, match="registered twice"):
        Gauge("demo_inflight", "Again.", registry=r)


def test_metrics_port_serves_any_get_path_and_refuses_other_methods() -> None:
    r, c, _, _ = _registry()
    c.labels("mlp", "OK").inc()

    async def scenario() -> None:
        server = HttpServer("127.0.0.1", 0, MetricsRoute(r), error_text, MAX_BODY)
        port = await server.start()
        base = f"http://127.0.0.1:{port}"

        def fetch(path: str, data: bytes | None = None) -> tuple[int, str, str]:
            try:
                with urllib.request.urlopen(base + path, data=data, timeout=5) as resp:
                    return resp.status, resp.headers["content-type"], resp.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.headers["content-type"], err.read().decode()

        try:
            for path in ("/metrics", "/"):
                status, ctype, text = await asyncio.to_thread(fetch, path)
                assert (status, ctype) == (200, CONTENT_TYPE)
                assert 'demo_requests_total{code="OK",model="mlp"} 1.0' in text
            status, _, text = await asyncio.to_thread(fetch, "/metrics", b"x")
            assert status == 405 and "only GET" in text
            assert (await asyncio.to_thread(fetch, "/metrics"))[0] == 200  # still serving
        finally:
            await server.stop(1.0)

    asyncio.run(scenario())
