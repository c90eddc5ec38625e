"""Captured inputs end to end: a real agent, a real Mosquitto, real onnxruntime, and a test-side
control plane (``capture_cloud.CaptureCloud``) that acknowledges per the contract.

The model is the MLP of the suite with ten labels; the inputs are drawn so that their top-1
confidences (computed here with onnxruntime, as the agent computes them) spread around the
policy's threshold, so the test knows which requests must be captured and which must not.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key
from protos import fleet_capture as fc
from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import Keys, Mosquitto, free_port, start_mosquitto
from tests.fleet.capture_cloud import CaptureCloud, anonymous_broker_conf

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TOP_K = 3


@dataclass(frozen=True)
class Samples:
    x: np.ndarray  # [n, 784] float32
    confidence: np.ndarray  # top-1 softmax score of each row
    probs: np.ndarray  # [n, 10]
    threshold: float  # half the rows are below it

    def low(self) -> list[int]:
        return [i for i in range(len(self.x)) if self.confidence[i] < self.threshold]

    def high(self) -> list[int]:
        return [i for i in range(len(self.x)) if self.confidence[i] >= self.threshold]


def npy_digest(row: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(row), allow_pickle=False)
    return fc.digest_of(buf.getvalue())


@pytest.fixture(scope="session")
def samples(models_dir: Path) -> Samples:
    rng = np.random.default_rng(18)
    x = (rng.random((24, 784)) * 0.08).astype(np.float32)
    session = ort.InferenceSession(str(models_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    conf = probs.max(axis=1)
    ordered = np.sort(conf)
    mid = len(ordered) // 2
    assert ordered[mid] - ordered[mid - 1] > 1e-4, "inputs too alike to split by confidence"
    return Samples(x, conf, probs, float((ordered[mid - 1] + ordered[mid]) / 2))


@pytest.fixture(scope="session")
def capture_packages(
    models_dir: Path, fleet_keys: dict[str, Keys], samples: Samples, tmp_path_factory: Any
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("capture-packages")
    key = load_private_key(fleet_keys["trusted"].private)
    policy = {"below_confidence": samples.threshold, "on_request": True, "top_k": TOP_K}
    spec = BuildSpec(
        name="digits",
        version="1",
        artifacts=[ArtifactInput(path=models_dir / "mlp.onnx")],
        labels=LABELS,
        capture=policy,
    )
    plain = BuildSpec(name="plain", version="1", artifacts=[ArtifactInput(models_dir / "mlp.onnx")])
    return {"digits": build_package(spec, out, key), "plain": build_package(plain, out, key)}


@dataclass
class Rig:
    broker: Mosquitto
    cloud: CaptureCloud
    tmp: Path
    keys: dict[str, Keys]
    packages: dict[str, Path]
    agents: list[AgentProcess]

    def agent(self, device_id: str, fleet: bool = True, **capture: Any) -> AgentProcess:
        settings: dict[str, Any] = {
            "device_id": device_id,
            "capture": {"ack_timeout_s": 2.0, "status_interval_s": 0.1, **capture},
        }
        if fleet:
            settings["fleet"] = {
                "url": f"mqtt://127.0.0.1:{self.broker.port}",
                "client_id": device_id,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "telemetry_interval_s": 0,
            }
        agent = AgentProcess(self.tmp / device_id, [self.keys["trusted"].public], **settings)
        self.agents.append(agent)
        agent.start()
        for name in ("digits", "plain"):
            assert agent.install(self.packages[name]).result.outcome == "COMMITTED"
        return agent

    def restart_broker(self) -> None:
        self.broker = start_mosquitto(
            self.broker.conf, self.broker.port, self.tmp / f"mosquitto-{time.monotonic_ns()}.log"
        )


@pytest.fixture
def rig(
    tmp_path: Path, fleet_keys: dict[str, Keys], capture_packages: dict[str, Path]
) -> Iterator[Rig]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(anonymous_broker_conf(port))
    broker = start_mosquitto(conf, port, tmp_path / "mosquitto.log")
    cloud = CaptureCloud(port)
    r = Rig(broker, cloud, tmp_path, fleet_keys, capture_packages, [])
    try:
        yield r
    finally:
        for a in r.agents:
            a.stop()
        cloud.close()
        r.broker.stop()


def infer_http(agent: AgentProcess, model: str, x: np.ndarray, version: str = "") -> np.ndarray:
    import tritonclient.http as th

    with th.InferenceServerClient(agent.http_address) as client:
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return client.infer(model, [inp], model_version=version).as_numpy("logits")


def infer_grpc(agent: AgentProcess, model: str, x: np.ndarray, capture: bool) -> np.ndarray:
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(agent.address)
    try:
        inp = tg.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], parameters={"capture": capture}).as_numpy("logits")
    finally:
        client.close()


def stored_files(agent: AgentProcess) -> list[Path]:
    return sorted((agent.workdir / "data" / "captures").glob("*.cap"))


def test_low_confidence_and_requested_inputs_arrive_once_with_their_meta(
    rig: Rig, samples: Samples
) -> None:
    agent = rig.agent("cam-1")
    low, high = samples.low()[:5], samples.high()[:3]
    # One request of two rows (each row is a sample of its own), then single rows, over HTTP.
    infer_http(agent, "digits", samples.x[[low[0], high[0]]])
    for i in [*low[1:], *high[1:]]:
        infer_http(agent, "digits", samples.x[i : i + 1])
    # Same inputs on a model without a policy: nothing of it is kept.
    for i in low:
        infer_http(agent, "plain", samples.x[i : i + 1])
    # The client asks for a capture over gRPC: kept whatever the confidence (on_request).
    asked = high[2]
    infer_grpc(agent, "digits", samples.x[asked : asked + 1], capture=True)

    expected = {npy_digest(samples.x[i]): i for i in low}
    requested = npy_digest(samples.x[asked])
    expected[requested] = asked
    cloud = rig.cloud
    cloud.wait(lambda: set(cloud.stored) >= set(expected), what="every capture stored")
    status = cloud.wait_status(
        "cam-1", lambda s: s.stored_records == 0 and s.uploaded_total == len(expected)
    )
    assert status.captured_total == len(expected) and status.dropped_total == 0
    assert set(cloud.stored) == set(expected)  # none of the confident ones, none of "plain"
    assert all(n == 1 for n in cloud.store_count.values())
    for digest, i in expected.items():
        rec = cloud.stored[digest]
        assert rec.device_id == "cam-1"
        assert np.array_equal(np.load(io.BytesIO(rec.data)), samples.x[i])
        meta = rec.meta
        assert (meta.model, meta.version, meta.input_name) == ("digits", "1", "input")
        assert (meta.input_kind, meta.media_type) == (fc.TENSOR, fc.NPY_MEDIA_TYPE)
        assert meta.reason == (fc.REQUESTED if digest == requested else fc.LOW_CONFIDENCE)
        best = np.argsort(-samples.probs[i])[:TOP_K]
        assert [p.index for p in meta.top_k] == best.tolist()
        assert [p.label for p in meta.top_k] == [LABELS[j] for j in best]
        assert meta.top_k[0].score == pytest.approx(samples.confidence[i], abs=1e-5)
        assert abs(meta.captured_at_ms - time.time() * 1000) < 120_000
    assert stored_files(agent) == []
    # A flag that is not a boolean is the client's error, on both protocols.
    body = {"parameters": {"capture": "yes"}, "inputs": [_json_input(samples.x[0])]}
    request = urllib.request.Request(
        f"{agent.http_url}/v2/models/digits/infer", data=json.dumps(body).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and b"capture" in refused.value.read()
    import tritonclient.utils as tu

    with pytest.raises(tu.InferenceServerException, match="capture"):
        infer_grpc(agent, "digits", samples.x[:1], capture="yes")  # type: ignore[arg-type]


def _json_input(row: np.ndarray) -> dict[str, Any]:
    return {"name": "input", "datatype": "FP32", "shape": [1, 784], "data": row.tolist()}


def test_broker_cut_during_upload_loses_nothing_and_stores_each_once(
    rig: Rig, samples: Samples
) -> None:
    agent = rig.agent("cam-2")
    cloud = rig.cloud
    low = samples.low()
    first, later = low[:3], low[3:6]
    cloud.hold_acks()  # received, not yet answered: the device keeps them and may resend
    for i in first:
        infer_http(agent, "digits", samples.x[i : i + 1])
    first_digests = {npy_digest(samples.x[i]) for i in first}
    cloud.wait(lambda: set(cloud.stored) >= first_digests, what="the first records received")

    rig.broker.stop()
    for i in later:  # serving and capturing go on without the broker
        infer_http(agent, "digits", samples.x[i : i + 1])
    rig.restart_broker()
    cloud.release()

    everything = first_digests | {npy_digest(samples.x[i]) for i in later}
    cloud.wait(lambda: set(cloud.stored) == everything, timeout=30, what="all records")
    cloud.wait_status("cam-2", lambda s: s.stored_records == 0 and s.uploaded_total == 6)
    assert all(cloud.store_count[d] == 1 for d in everything)  # acks may repeat, stores not
    assert stored_files(agent) == []


def test_quota_drops_the_oldest_and_a_purge_applies_once(rig: Rig, samples: Samples) -> None:
    agent = rig.agent("cam-3", max_records=3)
    cloud = rig.cloud
    cloud.hold_acks()
    low = samples.low()
    for n, i in enumerate(low[:6], 1):
        out = infer_http(agent, "digits", samples.x[i : i + 1])
        assert out.shape == (1, 10)  # serving goes on whatever the store does
        cloud.wait_status("cam-3", lambda s, n=n: s.captured_total == n)
    status = cloud.wait_status("cam-3", lambda s: s.stored_records == 3)
    assert status.dropped_total == 3
    kept = {p.name.split("-", 1)[1].removesuffix(".cap") for p in stored_files(agent)}
    assert kept == {npy_digest(samples.x[i]) for i in low[3:6]}  # the newest three

    cloud.purge("cam-3", "purge-1", int(time.time() * 1000) + 1)
    status = cloud.wait_status("cam-3", lambda s: s.last_purge_id == "purge-1")
    assert status.stored_records == 0 and stored_files(agent) == []

    for i in low[6:8]:
        infer_http(agent, "digits", samples.x[i : i + 1])
    cloud.wait_status("cam-3", lambda s: s.stored_records == 2)
    agent.stop()
    agent.start()  # the retained purge-1 is delivered again: already applied, not again
    cloud.purge("cam-3", "purge-2", 0)  # after purge-1 on the same topic; removes nothing
    status = cloud.wait_status("cam-3", lambda s: s.last_purge_id == "purge-2")
    assert status.stored_records == 2 and len(stored_files(agent)) == 2
    assert status.captured_total == 8 and status.dropped_total == 3


def test_a_crash_mid_write_leaves_no_half_record(rig: Rig, samples: Samples) -> None:
    agent = rig.agent("cam-4", fleet=False)
    agent.stop()
    agent.start(env={"EDGE_AGENT_CRASH_AT": "capture_before_rename"})
    i = samples.low()[0]
    with contextlib.suppress(Exception):  # the agent may die before it answers
        infer_http(agent, "digits", samples.x[i : i + 1])
    assert agent.wait_exit(30) != 0
    folder = agent.workdir / "data" / "captures"
    assert [p.name for p in folder.glob(".tmp-*")], "the crash point was not reached"
    assert stored_files(agent) == []

    agent.start()
    assert list(folder.glob(".tmp-*")) == [] and stored_files(agent) == []
    infer_http(agent, "digits", samples.x[i : i + 1])
    deadline = time.monotonic() + 10
    while not stored_files(agent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.name.split("-", 1)[1] for p in stored_files(agent)] == [
        f"{npy_digest(samples.x[i])}.cap"
    ]


def test_a_disabled_policy_captures_nothing(
    rig: Rig, samples: Samples, models_dir: Path, fleet_keys: dict[str, Keys]
) -> None:
    off = BuildSpec(
        name="digits",
        version="2",
        artifacts=[ArtifactInput(models_dir / "mlp.onnx")],
        capture={"enabled": False, "below_confidence": 1.01, "on_request": True},
    )
    package = build_package(off, rig.tmp, load_private_key(fleet_keys["trusted"].private))
    agent = rig.agent("cam-5")
    assert agent.install(package).result.outcome == "COMMITTED"  # now the active version
    for i in samples.low()[:4]:
        infer_http(agent, "digits", samples.x[i : i + 1])
    infer_grpc(agent, "digits", samples.x[:1], capture=True)
    # Positive control: version 1, asked for by name, still captures (the policy is per
    # version), and the writer keeps the order, so anything version 2 kept would be in by then.
    i = samples.low()[0]
    infer_http(agent, "digits", samples.x[i : i + 1], version="1")
    status = rig.cloud.wait_status("cam-5", lambda s: s.uploaded_total == 1)
    assert status.captured_total == 1
    assert [r.meta.version for r in rig.cloud.stored.values()] == ["1"]


def test_disagreement_with_a_shadow_version_is_captured_with_both_answers(
    rig: Rig, samples: Samples, models_dir: Path, fleet_keys: dict[str, Keys]
) -> None:
    from protos.gen import agent_pb2

    key = load_private_key(fleet_keys["trusted"].private)
    policy = {"on_disagreement": True, "top_k": TOP_K}
    built = {
        version: build_package(
            BuildSpec(
                name="judge",
                version=version,
                artifacts=[ArtifactInput(models_dir / onnx)],
                labels=LABELS,
                capture=policy,
            ),
            rig.tmp / f"judge-{version}",
            key,
        )
        for version, onnx in (("1", "mlp.onnx"), ("2", "mlp_v2.onnx"))
    }
    agent = rig.agent("cam-6")
    assert agent.install(built["1"]).result.outcome == "COMMITTED"
    assert agent.install(built["2"], activate=False).result.outcome == "COMMITTED"
    split = agent_pb2.SetTrafficRequest(model="judge", shadow_version="2", shadow_fraction=1.0)
    agent.agent_stub().SetTraffic(split, timeout=10, metadata=agent._metadata())

    def probs(onnx: str, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(models_dir / onnx), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input": x})[0].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # Inputs on which the two versions differ, and inputs on which they agree (negative control).
    pool = (np.random.default_rng(6).random((600, 784)) * 0.08).astype(np.float32)
    live, shadow = probs("mlp.onnx", pool), probs("mlp_v2.onnx", pool)
    same = live.argmax(axis=1) == shadow.argmax(axis=1)
    agree, differ_rows = np.nonzero(same)[0][:3], np.nonzero(~same)[0][:5]
    assert (len(agree), len(differ_rows)) == (3, 5), "the versions must agree on some inputs"
    differ = {npy_digest(pool[i]): int(i) for i in differ_rows}
    for i in [*agree, *differ_rows]:
        infer_http(agent, "judge", pool[i : i + 1])
        time.sleep(0.02)  # lets the mirror run, so none is skipped for being busy
    cloud = rig.cloud
    cloud.wait(lambda: len(cloud.stored) >= 1, what="a disagreement")
    cloud.wait_status("cam-6", lambda s: s.stored_records == 0 and s.captured_total > 0)
    assert set(cloud.stored) <= set(differ)  # never an input on which the versions agree
    for digest, rec in cloud.stored.items():
        i = differ[digest]
        meta = rec.meta
        assert (meta.reason, meta.version, meta.shadow_version) == (fc.DISAGREEMENT, "1", "2")
        assert meta.top_k[0].index == int(live[i].argmax())
        assert meta.shadow_top_k[0].index == int(shadow[i].argmax())
        assert meta.shadow_top_k[0].score == pytest.approx(shadow[i].max(), abs=1e-5)
