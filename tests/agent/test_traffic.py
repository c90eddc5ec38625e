"""Traffic split and shadow, over the wire against real agent processes.

Weighted routing of requests without a version (90/10 over 2,000 requests), a named version always
answering itself, weights changed under concurrent load with no failed request, a shadow version
whose agreement counts move while live answers stay the live version's, invalid splits refused,
the split surviving a restart, and the ``edge-agent traffic`` command. The round-robin itself is
checked in-process, on the real ``Route``.

Never import ``protos.gen.inference_pb2`` or ``edge_agent.grpc`` here: tritonclient owns the
``inference`` protobuf package in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from edge_agent.serving.traffic import Route, TrafficSplit, compare
from protos.gen import agent_pb2
from tests.agent.agent_process import AgentProcess

RTOL, ATOL = 1e-5, 1e-5


def ort_logits(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def infer_mlp(client: tc.InferenceServerClient, x: np.ndarray, version: str = ""):
    """(served version, logits) of one request."""
    i = tc.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    result = client.infer("mlp", [i], model_version=version)
    return result.get_response().model_version, result.as_numpy("logits")


def set_traffic(
    agent: AgentProcess,
    weights: dict[str, float],
    shadow_version: str = "",
    shadow_fraction: float = 0.0,
    model: str = "mlp",
) -> agent_pb2.TrafficInfo:
    req = agent_pb2.SetTrafficRequest(
        model=model,
        weights=weights,
        shadow_version=shadow_version,
        shadow_fraction=shadow_fraction,
    )
    return agent.agent_stub().SetTraffic(req, timeout=10)


def get_traffic(agent: AgentProcess, model: str = "mlp") -> agent_pb2.TrafficInfo:
    return agent.agent_stub().GetTraffic(agent_pb2.GetTrafficRequest(model=model), timeout=10)


@pytest.fixture(scope="module")
def mlp_pkgs(make_package: Callable[..., Path], models_dir: Path) -> dict[str, Path]:
    return {
        "1": make_package("mlp", "1", [models_dir / "mlp.onnx"]),
        "2": make_package("mlp", "2", [models_dir / "mlp_v2.onnx"]),
    }


@pytest.fixture(scope="module")
def probe(models_dir: Path) -> dict[str, np.ndarray]:
    x = np.random.default_rng(11).standard_normal((2, 784)).astype(np.float32)
    v1 = ort_logits(models_dir / "mlp.onnx", x)
    v2 = ort_logits(models_dir / "mlp_v2.onnx", x)
    assert not np.allclose(v1, v2, rtol=1e-2, atol=1e-2)
    return {"x": x, "1": v1, "2": v2}


def two_versions(start: Callable[..., AgentProcess], pkgs: dict[str, Path], name: str):
    """An agent serving mlp 1 (active) and 2 (installed without activating)."""
    agent = start(name)
    assert agent.install(pkgs["1"]).result.outcome == "COMMITTED"
    assert agent.install(pkgs["2"], activate=False).result.outcome == "COMMITTED"
    return agent


# --------------------------------------------------------------------------------------------
# the round-robin and the comparison, in-process


def test_route_shares_are_exact_and_interleaved() -> None:
    route = Route(TrafficSplit({"1": 90, "2": 10}))
    picks = [route.pick() for _ in range(1000)]
    assert Counter(picks) == {"1": 900, "2": 100}
    for start in range(0, 1000, 10):  # every window of sum(weights)/gcd requests is exact
        assert picks[start : start + 10].count("2") == 1
    assert Route(TrafficSplit({"1": 1, "2": 0})).pick() == "1"  # weight 0: never picked
    assert Route(TrafficSplit()).pick() == ""  # no weights: the active version
    shadow = Route(TrafficSplit({"1": 1}, "2", 0.1))
    assert sum(shadow.take_shadow() for _ in range(1000)) == 100


def test_compare_counts_top1_agreement_and_max_difference() -> None:
    live = {"logits": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    other = {"logits": np.array([[0.2, 0.7], [0.1, 0.5]], np.float32)}
    c = compare(live, other)
    assert (c.rows, c.agreed) == (2, 1)
    assert c.max_abs_diff == pytest.approx(0.7)
    with pytest.raises(ValueError):
        compare(live, {"logits": np.zeros((3, 2), np.float32)})


# --------------------------------------------------------------------------------------------
# over the wire


def test_split_routes_by_weight_and_named_version_wins(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = two_versions(start_agent, mlp_pkgs, "split")
    client = tc.InferenceServerClient(agent.address)
    # no split: today's behaviour, the active version answers everything
    assert {infer_mlp(client, probe["x"])[0] for _ in range(20)} == {"1"}
    assert dict(get_traffic(agent).weights) == {}

    info = set_traffic(agent, {"1": 90, "2": 10})
    assert dict(info.weights) == {"1": 90.0, "2": 10.0}
    assert info.active_version == "1"
    before = {v.version: v.success for v in get_traffic(agent).versions}
    seen: Counter[str] = Counter()
    for _ in range(2000):
        version, out = infer_mlp(client, probe["x"])
        np.testing.assert_allclose(out, probe[version], rtol=RTOL, atol=ATOL)
        seen[version] += 1
    share = seen["2"] / 2000
    assert abs(share - 0.10) <= 0.03, seen
    assert seen["1"] + seen["2"] == 2000

    # the per version counts in GetTraffic and the statistics moved by as much
    after = {v.version: v.success for v in get_traffic(agent).versions}
    assert {v: after[v] - before[v] for v in after} == {"1": seen["1"], "2": seen["2"]}
    stats = {s.version: s for s in client.get_inference_statistics("mlp").model_stats}
    assert stats["2"].inference_stats.success.count == after["2"]
    with urllib.request.urlopen(f"{agent.http_url}/v2/models/mlp/stats", timeout=5) as r:
        doc = json.loads(r.read())
    http_counts = {
        s["version"]: s["inference_stats"]["success"]["count"] for s in doc["model_stats"]
    }
    assert http_counts == after

    # a request naming a version goes to it, whatever the weights
    set_traffic(agent, {"1": 0, "2": 1})
    for _ in range(10):
        assert infer_mlp(client, probe["x"])[0] == "2"
        version, out = infer_mlp(client, probe["x"], "1")
        assert version == "1"
        np.testing.assert_allclose(out, probe["1"], rtol=RTOL, atol=ATOL)

    # a request failing after routing counts against the version it was routed to
    bad = tc.InferInput("input", [1, 10], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 10), np.float32))
    fails = {v.version: v.fail for v in get_traffic(agent).versions}
    with pytest.raises(Exception, match="shape"):
        client.infer("mlp", [bad])
    after_fail = {v.version: v.fail for v in get_traffic(agent).versions}
    assert (after_fail["1"] - fails["1"], after_fail["2"] - fails["2"]) == (0, 1)

    # back to the default
    set_traffic(agent, {})
    assert {infer_mlp(client, probe["x"])[0] for _ in range(10)} == {"1"}
    client.close()


def test_invalid_splits_are_refused_and_change_nothing(
    start_agent: Callable[..., AgentProcess], mlp_pkgs: dict[str, Path]
) -> None:
    agent = two_versions(start_agent, mlp_pkgs, "invalid")
    set_traffic(agent, {"1": 3, "2": 1})
    cases = [
        ({"1": 1, "9": 1}, "", 0.0, "no loaded version '9'"),
        ({"1": -1, "2": 2}, "", 0.0, ">= 0"),
        ({"1": 0, "2": 0}, "", 0.0, "sum to more than 0"),
        ({"1": 1}, "7", 0.5, "shadow version '7'"),
        ({"1": 1}, "2", 1.5, "shadow_fraction"),
        ({"1": 1}, "", 0.5, "without a shadow_version"),
    ]
    for weights, shadow, fraction, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            set_traffic(agent, weights, shadow, fraction)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, weights
        assert message in err.value.details(), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        set_traffic(agent, {"1": 1}, model="nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(get_traffic(agent).weights) == {"1": 3.0, "2": 1.0}  # untouched


def test_weight_change_under_load_loses_no_request(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = two_versions(start_agent, mlp_pkgs, "load")
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
                if not np.allclose(out, probe.get(version, out + 1), rtol=RTOL, atol=ATOL):
                    failures.append(f"version {version} answered {out[0, :3]}")
                seen[idx].append(version)
        finally:
            client.close()

    def total() -> int:
        return sum(len(s) for s in seen)

    def run_for(requests: int, timeout: float = 30.0) -> list[str]:
        """Wait for ``requests`` more answers; the versions that gave them."""
        marks = [len(s) for s in seen]
        deadline = time.monotonic() + timeout
        while total() < sum(marks) + requests:
            assert not failures, failures[:5]
            assert time.monotonic() < deadline, "clients made no progress"
            time.sleep(0.005)
        return [v for s, m in zip(seen, marks, strict=True) for v in s[m:]]

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    try:
        run_for(100)
        for weights in ({"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 0, "2": 1}, {"1": 1}):
            set_traffic(agent, weights)
            # requests already in flight may finish under the previous table: skip a few
            run_for(3 * threads_n)
            window = Counter(run_for(400))
            share = window["2"] / sum(window.values())
            expected = weights.get("2", 0) / sum(weights.values())
            assert abs(share - expected) <= 0.05, (weights, window)
        set_traffic(agent, {})
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert failures == [], failures[:5]
    assert total() > 1500


def test_shadow_counts_move_and_live_answers_are_unaffected(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = two_versions(start_agent, mlp_pkgs, "shadow")
    client = tc.InferenceServerClient(agent.address)
    info = set_traffic(agent, {}, shadow_version="2", shadow_fraction=0.25)
    assert (info.shadow_version, info.shadow_fraction) == ("2", 0.25)
    n = 400
    for _ in range(n):
        version, out = infer_mlp(client, probe["x"])
        assert version == "1"  # the live answer is always the live version's
        np.testing.assert_allclose(out, probe["1"], rtol=RTOL, atol=ATOL)
    # a request naming a version is not mirrored
    assert infer_mlp(client, probe["x"], "1")[0] == "1"

    deadline = time.monotonic() + 10
    while True:
        versions = {v.version: v for v in get_traffic(agent).versions}
        sh = versions["2"].shadow
        if sh.compared + sh.skipped + sh.failed >= n // 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sh.compared + sh.skipped + sh.failed == n // 4, sh  # exactly the fraction
    assert sh.failed == 0 and sh.compared > 0, sh
    assert sh.rows == 2 * sh.compared  # two rows per request, both compared
    expected_agree = int((probe["1"].argmax(1) == probe["2"].argmax(1)).sum()) * sh.compared
    assert sh.agreed_rows == expected_agree
    assert sh.max_abs_diff == pytest.approx(float(np.abs(probe["1"] - probe["2"]).max()), rel=1e-4)
    # mirrored runs are not requests: version 2 answered none, version 1 all of them
    assert versions["2"].success == 0
    assert versions["1"].success == n + 1

    # the same figures in both statistics endpoints
    stats = {s.version: s for s in client.get_inference_statistics("mlp").model_stats}
    with urllib.request.urlopen(f"{agent.http_url}/v2/models/mlp/versions/2/stats") as r:
        http = json.loads(r.read())["model_stats"][0]["shadow_stats"]
    assert http["compared"] == sh.compared and http["skipped"] == sh.skipped
    assert stats["2"].inference_stats.success.count == 0
    client.close()


def test_split_survives_a_restart_and_the_cli_drives_it(
    start_agent: Callable[..., AgentProcess],
    mlp_pkgs: dict[str, Path],
    probe: dict[str, np.ndarray],
) -> None:
    agent = two_versions(start_agent, mlp_pkgs, "restart")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        where = ["--config", str(agent.config_path), "--address", agent.address]
        return subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "traffic", *where, *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def cli(*args: str) -> dict:
        done = run(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    doc = cli("set", "--model", "mlp", "--weight", "1=3", "--weight", "2=1", "--shadow", "2")
    assert doc["weights"] == {"1": 3.0, "2": 1.0} and doc["shadowVersion"] == "2"
    assert json.loads((agent.workdir / "data" / "traffic.json").read_text())["models"]["mlp"]

    agent.stop()
    agent.start()
    info = get_traffic(agent)
    assert dict(info.weights) == {"1": 3.0, "2": 1.0}
    assert (info.shadow_version, info.shadow_fraction) == ("2", pytest.approx(0.1))
    client = tc.InferenceServerClient(agent.address)
    seen = Counter(infer_mlp(client, probe["x"])[0] for _ in range(40))
    assert seen == {"1": 30, "2": 10}
    client.close()

    refused = run("set", "--model", "mlp", "--weight", "5=1")
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "'5'" in refused.stderr

    assert cli("clear", "--model", "mlp").get("weights", {}) == {}
    assert cli("get", "--model", "mlp")["activeVersion"] == "1"
    agent.stop()
    agent.start()
    assert dict(get_traffic(agent).weights) == {}


def test_standby_install_is_kept_when_the_split_pins_every_other_version(
    start_agent: Callable[..., AgentProcess],
    make_package: Callable[..., Path],
    mlp_pkgs: dict[str, Path],
    models_dir: Path,
    probe: dict[str, np.ndarray],
) -> None:
    """With the cap (2) taken by the active version and a shadow, a standby install goes over the
    cap rather than evicting itself while reporting COMMITTED."""
    agent = two_versions(start_agent, mlp_pkgs, "pinned")
    set_traffic(agent, {}, shadow_version="2", shadow_fraction=0.5)
    v3 = make_package("mlp", "3", [models_dir / "mlp_v2.onnx"])
    assert agent.install(v3, activate=False).result.outcome == "COMMITTED"
    client = tc.InferenceServerClient(agent.address)
    version, out = infer_mlp(client, probe["x"], "3")
    assert version == "3"
    np.testing.assert_allclose(out, probe["2"], rtol=RTOL, atol=ATOL)
    assert infer_mlp(client, probe["x"])[0] == "1"  # still the active version
    info = set_traffic(agent, {"1": 50, "3": 50})  # the standby can take a share
    assert dict(info.weights) == {"1": 50, "3": 50}
    client.close()
