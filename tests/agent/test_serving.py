"""Serving behaviour over the wire: versions side by side, activation that survives a restart,
hot swap under concurrent load with zero failed requests, and dynamic batching that hands every
caller its own rows. Each test runs its own real agent subprocess (they change its state).

Never import ``protos.gen.inference_pb2`` or ``edge_agent.grpc`` here: tritonclient owns the
``inference`` protobuf package in this process.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from prometheus_client.parser import text_string_to_metric_families

from protos.gen import agent_pb2
from tests.agent.agent_process import AgentProcess

RTOL, ATOL = 1e-5, 1e-5


def ort_logits(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def mlp_input(x: np.ndarray) -> list[tc.InferInput]:
    i = tc.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def infer_mlp(client: tc.InferenceServerClient, x: np.ndarray, version: str = ""):
    """(served version, logits) of one request."""
    result = client.infer("mlp", mlp_input(x), model_version=version)
    return result.get_response().model_version, result.as_numpy("logits")


def scrape(agent: AgentProcess) -> dict[str, float]:
    """Every sample of the metrics endpoint, keyed by name and sorted labels."""
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


@pytest.fixture(scope="module")
def mlp_pkgs(make_package: Callable[..., Path], models_dir: Path) -> dict[str, Path]:
    return {
        "1": make_package("mlp", "1", [models_dir / "mlp.onnx"]),
        "2": make_package("mlp", "2", [models_dir / "mlp_v2.onnx"]),
    }


@pytest.fixture(scope="module")
def probe(models_dir: Path) -> dict[str, np.ndarray]:
    """One input and what each MLP version answers to it, computed directly with onnxruntime."""
    x = np.random.default_rng(7).standard_normal((2, 784)).astype(np.float32)
    v1 = ort_logits(models_dir / "mlp.onnx", x)
    v2 = ort_logits(models_dir / "mlp_v2.onnx", x)
    assert not np.allclose(v1, v2, rtol=1e-2, atol=1e-2)  # the versions are distinguishable
    return {"x": x, "1": v1, "2": v2}


# --------------------------------------------------------------------------------------------
# several models and several versions of one model


def _list_models(agent: AgentProcess) -> dict[str, agent_pb2.ModelInfo]:
    resp = agent.agent_stub().ListModels(agent_pb2.ListModelsRequest(), timeout=5)
    return {m.name: m for m in resp.models}


def _assert_serves(client: tc.InferenceServerClient, probe: dict, default: str) -> None:
    version, out = infer_mlp(client, probe["x"])
    assert version == default
    np.testing.assert_allclose(out, probe[default], rtol=RTOL, atol=ATOL)
    for v in ("1", "2"):
        version, out = infer_mlp(client, probe["x"], v)
        assert version == v
        np.testing.assert_allclose(out, probe[v], rtol=RTOL, atol=ATOL)


def test_versions_side_by_side_activation_persists_across_restart(
    start_agent: Callable[..., AgentProcess],
    make_package: Callable[..., Path],
    models_dir: Path,
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = start_agent("versions")  # max_versions_per_model = 2 (the default)
    assert agent.install(mlp_pkgs["1"]).result.outcome == "COMMITTED"
    add_pkg = make_package("add", "1", [models_dir / "add_int.onnx"])
    assert agent.install(add_pkg).result.outcome == "COMMITTED"

    # installing v2 activates it: requests without a version go there, v1 is still served
    r = agent.install(mlp_pkgs["2"])
    assert r.result.outcome == "COMMITTED" and r.model.active
    client = tc.InferenceServerClient(agent.address)
    _assert_serves(client, probe, default="2")
    md = client.get_model_metadata("mlp")
    assert sorted(md.versions) == ["1", "2"]
    assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "2")

    models = _list_models(agent)
    assert set(models) == {"mlp", "add"}
    assert models["mlp"].active_version == "2"
    assert {v.version: v.active for v in models["mlp"].versions} == {"1": False, "2": True}
    assert {v.runtime for v in models["mlp"].versions} == {"onnx"}
    assert {v.package_digest for v in models["mlp"].versions} == {
        p.name.split(".")[0] for p in mlp_pkgs.values()
    }

    # the other model is served side by side
    a = np.arange(8, dtype=np.int32).reshape(2, 4)
    ins = [tc.InferInput("a", [2, 4], "INT32"), tc.InferInput("b", [2, 4], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a * 10)
    np.testing.assert_array_equal(client.infer("add", ins).as_numpy("sum"), a * 11)

    # unknown names and versions are NOT_FOUND and change nothing
    stub = agent.agent_stub()
    for name, version in [("mlp", "9"), ("nope", "1")]:
        with pytest.raises(grpc.RpcError) as err:
            stub.ActivateVersion(agent_pb2.ActivateVersionRequest(name=name, version=version))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    _assert_serves(client, probe, default="2")

    # switch back to 1; the choice is committed and survives a restart
    info = stub.ActivateVersion(agent_pb2.ActivateVersionRequest(name="mlp", version="1"))
    assert (info.name, info.version, info.active) == ("mlp", "1", True)
    _assert_serves(client, probe, default="1")
    client.close()

    agent.stop()
    agent.start()
    client = tc.InferenceServerClient(agent.address)
    assert client.is_server_ready()
    _assert_serves(client, probe, default="1")
    assert sorted(client.get_model_metadata("mlp").versions) == ["1", "2"]
    models = _list_models(agent)
    assert set(models) == {"mlp", "add"}
    assert models["mlp"].active_version == "1"

    # a third version installed without activation: served by version only, and the oldest
    # inactive version (2) makes room for it
    v3 = make_package("mlp", "3", [models_dir / "mlp_v2.onnx"])
    r = agent.install(v3, activate=False)
    assert r.result.outcome == "COMMITTED" and not r.model.active
    version, out = infer_mlp(client, probe["x"])
    assert version == "1"
    np.testing.assert_allclose(out, probe["1"], rtol=RTOL, atol=ATOL)
    version, out = infer_mlp(client, probe["x"], "3")
    assert version == "3"
    np.testing.assert_allclose(out, probe["2"], rtol=RTOL, atol=ATOL)  # v3 carries v2's weights
    assert sorted(client.get_model_metadata("mlp").versions) == ["1", "3"]
    assert not client.is_model_ready("mlp", "2")

    # an activating install keeps the version it replaces (the one a guard or a rollback
    # re-activates without a download) and makes room with the other one (3), although the
    # active version 1 was loaded first at start-up
    v4 = make_package("mlp", "4", [models_dir / "mlp_v2.onnx"])
    r = agent.install(v4)
    assert r.result.outcome == "COMMITTED" and r.model.active
    assert sorted(client.get_model_metadata("mlp").versions) == ["1", "4"]
    assert infer_mlp(client, probe["x"])[0] == "4"
    request = agent_pb2.ActivateVersionRequest(name="mlp", version="1")
    info = agent.agent_stub().ActivateVersion(request)
    assert (info.version, info.active) == ("1", True)
    version, out = infer_mlp(client, probe["x"])
    assert version == "1"
    np.testing.assert_allclose(out, probe["1"], rtol=RTOL, atol=ATOL)
    client.close()


# --------------------------------------------------------------------------------------------
# hot swap under load


def test_hot_swap_under_concurrent_load_loses_no_request(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = start_agent("swap")
    assert agent.install(mlp_pkgs["1"]).result.outcome == "COMMITTED"
    threads_n = 6
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(threads_n)]
    failures: list[str] = []

    def hammer(idx: int) -> None:
        client = tc.InferenceServerClient(agent.address)
        try:
            while not stop.is_set():
                try:
                    version, out = infer_mlp(client, probe["x"])
                except Exception as exc:
                    failures.append(str(exc))
                    continue
                if version not in ("1", "2") or not np.allclose(
                    out, probe[version], rtol=RTOL, atol=ATOL
                ):
                    failures.append(f"version {version} answered {out[0, :3]}")
                seen[idx].append(version)
        finally:
            client.close()

    def wait_for_progress(requests_each: int = 25, timeout: float = 20.0) -> None:
        """Block until every client finished that many more requests (or failed trying)."""
        marks = [len(s) for s in seen]
        deadline = time.monotonic() + timeout
        while any(len(s) < m + requests_each for s, m in zip(seen, marks, strict=True)):
            assert not failures, failures[:5]
            assert time.monotonic() < deadline, "clients made no progress"
            time.sleep(0.01)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    try:
        wait_for_progress()
        r = agent.install(mlp_pkgs["2"])  # loads, self-tests and activates under load
        assert r.result.outcome == "COMMITTED", r.result
        wait_for_progress()
        agent.agent_stub().ActivateVersion(
            agent_pb2.ActivateVersionRequest(name="mlp", version="1"), timeout=5
        )
        wait_for_progress()
    finally:
        stop.set()
        for w in workers:
            w.join(10)

    assert failures == [], failures[:5]
    for s in seen:
        # every client saw v1, then v2 after the install, then v1 again: never out of order
        phases = [v for i, v in enumerate(s) if i == 0 or s[i - 1] != v]
        assert phases == ["1", "2", "1"], phases


# --------------------------------------------------------------------------------------------
# dynamic batching


def test_dynamic_batching_returns_each_caller_its_own_rows(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    models_dir: Path,
) -> None:
    agent = start_agent("batching", models={"mlp": {"max_batch_size": 16, "max_queue_delay_ms": 5}})
    assert agent.install(mlp_pkgs["1"]).result.outcome == "COMMITTED"
    rng = np.random.default_rng(3)
    requests = [
        rng.standard_normal((int(rng.integers(1, 4)), 784)).astype(np.float32) for _ in range(96)
    ]
    # requests of max_batch_size rows or more bypass the batcher, in the same bursts
    requests[40] = rng.standard_normal((16, 784)).astype(np.float32)
    requests[70] = rng.standard_normal((20, 784)).astype(np.float32)
    expected = [ort_logits(models_dir / "mlp.onnx", x) for x in requests]
    rows_batched = sum(len(x) for x in requests if len(x) < 16)
    before = scrape(agent)

    client = tc.InferenceServerClient(agent.address)
    results: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def callback(idx: int, result, error) -> None:
        with lock:
            results[idx] = error if error is not None else result.as_numpy("logits")
            if len(results) == len(requests):
                done.set()

    for rounds in range(0, len(requests), 32):  # bursts of 32 concurrent callers
        for i in range(rounds, rounds + 32):
            client.async_infer(
                "mlp", mlp_input(requests[i]), lambda result, error, i=i: callback(i, result, error)
            )
        time.sleep(0.02)
    assert done.wait(30), f"{len(results)} of {len(requests)} answered"
    client.close()

    for i, x in enumerate(requests):
        out = results[i]
        assert isinstance(out, np.ndarray), f"request {i} failed: {out}"
        assert out.shape == (len(x), 10)
        np.testing.assert_allclose(out, expected[i], rtol=1e-4, atol=1e-5)

    after = scrape(agent)

    def delta(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)

    batches = delta("edge_agent_batch_rows_count{model=mlp}")
    assert delta("edge_agent_batch_rows_sum{model=mlp}") == rows_batched  # each row once
    assert 0 < batches < len(requests) - 2  # requests were merged
    up_to_4 = delta("edge_agent_batch_rows_bucket{le=4.0,model=mlp}")
    assert batches - up_to_4 > 0, "no batch held more rows than one request sends (3)"
    assert delta("edge_agent_batch_rows_bucket{le=16.0,model=mlp}") == batches  # <= max size
