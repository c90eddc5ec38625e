"""The agent's wire protocol, end to end with the public ``tritonclient[grpc]`` client.

One agent (a real subprocess) serves every model of this module: ``mlp`` (ONNX), ``mlp_tfl``
(TFLite only), ``add`` (INT32, two inputs) and ``multi`` (FP64 / INT64 / BOOL). It runs with
``max_message_bytes`` = 1 MiB so the oversized-message case needs no agent of its own. Overload
gets dedicated agents with a deliberately slow model.

This process holds tritonclient's copy of the ``inference`` protobuf package, so it never imports
``protos.gen.inference_pb2`` or ``edge_agent.grpc``; hand-built requests use
``tritonclient.grpc.service_pb2`` and go through the client's own stub.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as oip

from tests.agent.agent_process import AgentProcess

MAX_MESSAGE_BYTES = 1 << 20
RNG = np.random.default_rng(1234)

# --------------------------------------------------------------------------------------------
# helpers


def ort_run(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def litert_run(model: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    (inp,) = interp.get_input_details()
    interp.resize_tensor_input(inp["index"], list(x.shape), strict=False)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    (out,) = interp.get_output_details()
    return interp.get_tensor(out["index"])


def infer_input(name: str, arr: np.ndarray, datatype: str) -> tc.InferInput:
    i = tc.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def mlp_infer(client: tc.InferenceServerClient, x: np.ndarray, **kw) -> np.ndarray:
    return client.infer("mlp", [infer_input("input", x, "FP32")], **kw).as_numpy("logits")


def stub_infer(client: tc.InferenceServerClient, req: oip.ModelInferRequest):
    return client._client_stub.ModelInfer(req, timeout=10)


def decode_outputs(resp: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    dt = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "BOOL": "?"}
    assert len(resp.raw_output_contents) == len(resp.outputs)
    return {
        o.name: np.frombuffer(raw, dtype=dt[o.datatype]).reshape(list(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


def raw_request(model: str, tensors: list[tuple[str, str, list[int], bytes]], **kw):
    req = oip.ModelInferRequest(model_name=model, **kw)
    for name, datatype, shape, data in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(data)
    return req


_TYPED_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BOOL": "bool_contents",
}


def typed_request(model: str, tensors: list[tuple[str, str, np.ndarray]], **kw):
    req = oip.ModelInferRequest(model_name=model, **kw)
    for name, datatype, arr in tensors:
        t = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        getattr(t.contents, _TYPED_FIELD[datatype]).extend(arr.reshape(-1).tolist())
    return req


def scrape(agent: AgentProcess) -> dict[str, list]:
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample_value(samples: list, name: str, **labels: str) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def requests_count(agent: AgentProcess, **labels: str) -> float:
    fams = scrape(agent)
    return sample_value(
        fams.get("edge_agent_inference_requests", []),
        "edge_agent_inference_requests_total",
        **labels,
    )


def build_slow_onnx(path: Path, size: int = 512, layers: int = 4) -> Path:
    """``y = x + 0 * mean(tanh(...tanh(expand(mean(x)) @ W)...))``: tens of ms per call.

    The big matrix depends on the input, so onnxruntime cannot constant-fold the work away.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((size, size)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Expand", ["m", "big_shape"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "big_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
) -> Iterator[AgentProcess]:
    a = AgentProcess(
        tmp_path_factory.mktemp("protocol-agent"),
        [keys["public"]],
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    a.start()
    try:
        for name, artifact in [
            ("mlp", "mlp.onnx"),
            ("mlp_tfl", "mlp.tflite"),
            ("add", "add_int.onnx"),
            ("multi", "multi_dtype.onnx"),
        ]:
            r = a.install(make_package(name, "1", [models_dir / artifact]))
            assert r.result.outcome == "COMMITTED", r.result
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(agent.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def mlp_x() -> np.ndarray:
    return RNG.standard_normal((3, 784)).astype(np.float32)


@pytest.fixture
def still_serving(
    client: tc.InferenceServerClient, models_dir: Path, mlp_x: np.ndarray
) -> Iterator[None]:
    """After the test: a good request on the same agent still gets the right answer."""
    yield
    expected = ort_run(models_dir / "mlp.onnx", {"input": mlp_x})["logits"]
    np.testing.assert_allclose(mlp_infer(client, mlp_x), expected, rtol=1e-5, atol=1e-6)
    assert client.is_server_ready()


# --------------------------------------------------------------------------------------------
# health and metadata RPCs


def test_server_live_and_ready(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client: tc.InferenceServerClient) -> None:
    md = client.get_server_metadata()
    assert md.name == "edge-agent"
    assert md.version
    assert "model_repository" in md.extensions


def test_model_ready(client: tc.InferenceServerClient) -> None:
    assert client.is_model_ready("mlp") is True
    assert client.is_model_ready("mlp", "1") is True
    assert client.is_model_ready("mlp_tfl", "1") is True
    assert client.is_model_ready("no-such-model") is False
    assert client.is_model_ready("mlp", "7") is False


def test_model_metadata(client: tc.InferenceServerClient) -> None:
    md = client.get_model_metadata("mlp")
    assert md.name == "mlp"
    assert list(md.versions) == ["1"]
    assert md.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("input", "FP32", [-1, 784])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]
    assert client.get_model_metadata("mlp", "1") == md

    tfl = client.get_model_metadata("mlp_tfl")
    assert tfl.platform == "tensorflow_lite"
    assert [(t.datatype, list(t.shape)) for t in tfl.inputs] == [("FP32", [-1, 784])]
    assert [(t.datatype, list(t.shape)) for t in tfl.outputs] == [("FP32", [-1, 10])]

    add = client.get_model_metadata("add")
    assert [(t.name, t.datatype, list(t.shape)) for t in add.inputs] == [
        ("a", "INT32", [-1, 4]),
        ("b", "INT32", [-1, 4]),
    ]


@pytest.mark.parametrize(("name", "version"), [("no-such-model", ""), ("mlp", "7")])
def test_model_metadata_not_found(agent: AgentProcess, name: str, version: str) -> None:
    channel = grpc.insecure_channel(agent.address)
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata",
        request_serializer=oip.ModelMetadataRequest.SerializeToString,
        response_deserializer=oip.ModelMetadataResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(oip.ModelMetadataRequest(name=name, version=version), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


# --------------------------------------------------------------------------------------------
# ModelInfer on both backends


def test_infer_onnx_matches_onnxruntime(client: tc.InferenceServerClient, models_dir: Path) -> None:
    x = RNG.standard_normal((5, 784)).astype(np.float32)
    expected = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    result = client.infer(
        "mlp", [infer_input("input", x, "FP32")], request_id="req-42", model_version="1"
    )
    resp = result.get_response()
    assert (resp.model_name, resp.model_version, resp.id) == ("mlp", "1", "req-42")
    out = result.as_numpy("logits")
    assert out.dtype == np.float32 and out.shape == (5, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # without a version: the active one, same answer
    np.testing.assert_allclose(mlp_infer(client, x[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def test_infer_tflite_matches_litert(client: tc.InferenceServerClient, models_dir: Path) -> None:
    md = client.get_model_metadata("mlp_tfl")
    in_name, out_name = md.inputs[0].name, md.outputs[0].name
    for rows in (1, 4):
        x = RNG.standard_normal((rows, 784)).astype(np.float32)
        expected = litert_run(models_dir / "mlp.tflite", x)
        result = client.infer("mlp_tfl", [infer_input(in_name, x, "FP32")])
        out = result.as_numpy(out_name)
        assert out.shape == (rows, 10)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        # the TFLite MLP carries the ONNX MLP's weights
        onnx_ref = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
        np.testing.assert_allclose(out, onnx_ref, rtol=1e-3, atol=1e-4)


def test_two_variant_package_served_by_tflite_under_package_names(
    start_agent: Callable[..., AgentProcess], make_package: Callable[..., Path], models_dir: Path
) -> None:
    """A package with ONNX and TFLite variants, on an agent that prefers TFLite: LiteRT serves it
    under the package's tensor names (the ONNX ones), with LiteRT's answers."""
    pkg = make_package("dual", "1", [models_dir / "mlp.onnx", models_dir / "mlp.tflite"])
    agent = start_agent("dual", variant_preference=["tflite", "onnx"])
    r = agent.install(pkg)
    assert r.result.outcome == "COMMITTED" and r.model.runtime == "tflite", r
    client = tc.InferenceServerClient(agent.address)
    md = client.get_model_metadata("dual")
    assert md.platform == "tensorflow_lite"
    assert [(t.name, list(t.shape)) for t in md.inputs] == [("input", [-1, 784])]
    assert [(t.name, list(t.shape)) for t in md.outputs] == [("logits", [-1, 10])]
    x = RNG.standard_normal((3, 784)).astype(np.float32)
    out = client.infer("dual", [infer_input("input", x, "FP32")]).as_numpy("logits")
    np.testing.assert_allclose(out, litert_run(models_dir / "mlp.tflite", x), rtol=1e-5, atol=1e-6)
    client.close()


def test_infer_requested_output_subset(client: tc.InferenceServerClient) -> None:
    x = np.array([[1, 2, 3], [-4, 5, 0]], dtype=np.int64)
    inputs = [
        infer_input("x_fp64", x.astype(np.float64), "FP64"),
        infer_input("x_i64", x, "INT64"),
        infer_input("x_bool", x > 0, "BOOL"),
    ]
    result = client.infer("multi", inputs, outputs=[tc.InferRequestedOutput("y_i64")])
    assert [o.name for o in result.get_response().outputs] == ["y_i64"]
    np.testing.assert_array_equal(result.as_numpy("y_i64"), x + 1)


# --------------------------------------------------------------------------------------------
# typed contents and raw contents give identical answers


def test_typed_equals_raw_fp32(client: tc.InferenceServerClient, models_dir: Path) -> None:
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    expected = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    typed = decode_outputs(stub_infer(client, typed_request("mlp", [("input", "FP32", x)])))
    raw = decode_outputs(
        stub_infer(client, raw_request("mlp", [("input", "FP32", [2, 784], x.tobytes())]))
    )
    np.testing.assert_array_equal(typed["logits"], raw["logits"])
    np.testing.assert_allclose(typed["logits"], expected, rtol=1e-5, atol=1e-6)


def test_typed_equals_raw_int32(client: tc.InferenceServerClient, models_dir: Path) -> None:
    a = RNG.integers(-(2**30), 2**30, size=(3, 4), dtype=np.int32)
    b = RNG.integers(-(2**30), 2**30, size=(3, 4), dtype=np.int32)
    expected = ort_run(models_dir / "add_int.onnx", {"a": a, "b": b})["sum"]
    typed = decode_outputs(
        stub_infer(client, typed_request("add", [("a", "INT32", a), ("b", "INT32", b)]))
    )
    raw = decode_outputs(
        stub_infer(
            client,
            raw_request(
                "add", [("a", "INT32", [3, 4], a.tobytes()), ("b", "INT32", [3, 4], b.tobytes())]
            ),
        )
    )
    via_client = client.infer(
        "add", [infer_input("a", a, "INT32"), infer_input("b", b, "INT32")]
    ).as_numpy("sum")
    assert typed["sum"].dtype == np.int32
    np.testing.assert_array_equal(typed["sum"], expected)
    np.testing.assert_array_equal(raw["sum"], expected)
    np.testing.assert_array_equal(via_client, expected)


def test_typed_equals_raw_fp64_int64_bool(
    client: tc.InferenceServerClient, models_dir: Path
) -> None:
    xf = RNG.standard_normal((2, 3))  # float64
    xi = RNG.integers(-(2**40), 2**40, size=(2, 3), dtype=np.int64)
    xb = RNG.integers(0, 2, size=(2, 3)).astype(bool)
    expected = ort_run(models_dir / "multi_dtype.onnx", {"x_fp64": xf, "x_i64": xi, "x_bool": xb})
    typed = decode_outputs(
        stub_infer(
            client,
            typed_request(
                "multi", [("x_fp64", "FP64", xf), ("x_i64", "INT64", xi), ("x_bool", "BOOL", xb)]
            ),
        )
    )
    raw = decode_outputs(
        stub_infer(
            client,
            raw_request(
                "multi",
                [
                    ("x_fp64", "FP64", [2, 3], xf.tobytes()),
                    ("x_i64", "INT64", [2, 3], xi.tobytes()),
                    ("x_bool", "BOOL", [2, 3], xb.tobytes()),
                ],
            ),
        )
    )
    # inputs in another order than the model's: raw buffers pair with inputs by position
    reordered = decode_outputs(
        stub_infer(
            client,
            raw_request(
                "multi",
                [
                    ("x_bool", "BOOL", [2, 3], xb.tobytes()),
                    ("x_i64", "INT64", [2, 3], xi.tobytes()),
                    ("x_fp64", "FP64", [2, 3], xf.tobytes()),
                ],
            ),
        )
    )
    for name in ("y_fp64", "y_i64", "y_bool"):
        np.testing.assert_array_equal(typed[name], expected[name])
        np.testing.assert_array_equal(raw[name], expected[name])
        np.testing.assert_array_equal(reordered[name], expected[name])
    np.testing.assert_array_equal(typed["y_bool"], ~xb)
    np.testing.assert_array_equal(typed["y_i64"], xi + 1)


# --------------------------------------------------------------------------------------------
# bad requests: a precise status, and the agent keeps serving


_X1 = np.ones((1, 784), dtype=np.float32)
_A = np.arange(4, dtype=np.int32).reshape(1, 4)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _both_raw_and_typed() -> oip.ModelInferRequest:
    req = raw_request("mlp", [("input", "FP32", [1, 784], _X1.tobytes())])
    req.inputs[0].contents.fp32_contents.extend(_X1.reshape(-1).tolist())
    return req


def _raw_count_mismatch() -> oip.ModelInferRequest:
    req = raw_request("add", [("a", "INT32", [1, 4], _A.tobytes())])
    req.inputs.add(name="b", datatype="INT32", shape=[1, 4])  # two inputs, one raw buffer
    return req


def _typed_count_mismatch() -> oip.ModelInferRequest:
    req = typed_request("mlp", [("input", "FP32", _X1)])
    del req.inputs[0].contents.fp32_contents[-1]
    return req


def _unknown_output() -> oip.ModelInferRequest:
    req = raw_request("mlp", [("input", "FP32", [1, 784], _X1.tobytes())])
    req.outputs.add(name="probabilities")
    return req


BAD_REQUESTS = {
    "wrong_dtype": (
        lambda: raw_request("mlp", [("input", "FP64", [1, 784], _X1.astype(np.float64).tobytes())]),
        INVALID,
        "must be FP32",
    ),
    "wrong_rank": (
        lambda: raw_request("mlp", [("input", "FP32", [784], _X1.tobytes())]),
        INVALID,
        "shape",
    ),
    "wrong_fixed_dim": (
        lambda: raw_request("mlp", [("input", "FP32", [1, 783], _X1.tobytes()[:-4])]),
        INVALID,
        "shape",
    ),
    "raw_byte_length": (
        lambda: raw_request("mlp", [("input", "FP32", [1, 784], _X1.tobytes()[:-1])]),
        INVALID,
        "bytes",
    ),
    "raw_count_mismatch": (_raw_count_mismatch, INVALID, "raw_input_contents"),
    "both_raw_and_typed": (_both_raw_and_typed, INVALID, "both raw and typed"),
    "typed_count_mismatch": (_typed_count_mismatch, INVALID, "values"),
    "unknown_datatype": (
        lambda: raw_request("mlp", [("input", "FP99", [1, 784], _X1.tobytes())]),
        INVALID,
        "datatype",
    ),
    "negative_dim": (
        lambda: raw_request("mlp", [("input", "FP32", [-1, 784], b"")]),
        INVALID,
        "negative",
    ),
    "unknown_input": (
        lambda: raw_request("mlp", [("pixels", "FP32", [1, 784], _X1.tobytes())]),
        INVALID,
        "no input",
    ),
    "missing_input": (
        lambda: raw_request("add", [("a", "INT32", [1, 4], _A.tobytes())]),
        INVALID,
        "missing",
    ),
    "duplicate_input": (
        lambda: raw_request(
            "add",
            [
                ("a", "INT32", [1, 4], _A.tobytes()),
                ("a", "INT32", [1, 4], _A.tobytes()),
                ("b", "INT32", [1, 4], _A.tobytes()),
            ],
        ),
        INVALID,
        "twice",
    ),
    "unknown_output": (_unknown_output, INVALID, "no output"),
    "empty_tensor_raw": (
        lambda: raw_request("mlp", [("input", "FP32", [0, 784], b"")]),
        INVALID,
        "empty",
    ),
    "empty_tensor_typed": (
        lambda: typed_request("mlp", [("input", "FP32", np.zeros((0, 784), np.float32))]),
        INVALID,
        "empty",
    ),
    "unknown_model": (
        lambda: raw_request("nope", [("input", "FP32", [1, 784], _X1.tobytes())]),
        NOT_FOUND,
        "nope",
    ),
    "unknown_version": (
        lambda: raw_request("mlp", [("input", "FP32", [1, 784], _X1.tobytes())], model_version="9"),
        NOT_FOUND,
        "9",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_precise_status(
    client: tc.InferenceServerClient, still_serving: None, case: str
) -> None:
    build, code, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        stub_infer(client, build())
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()


def test_bad_request_via_tritonclient_reports_status(
    client: tc.InferenceServerClient, still_serving: None
) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [infer_input("input", np.ones((1, 10), np.float32), "FP32")])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_classification_output_refused_as_over_http(
    client: tc.InferenceServerClient, still_serving: None
) -> None:
    """``class_count`` asks for class strings; answering plain scores would be a silent lie."""
    from tritonclient.utils import InferenceServerException

    x = infer_input("input", np.ones((1, 784), np.float32), "FP32")
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [x], outputs=[tc.InferRequestedOutput("logits", class_count=3)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification parameter is not supported" in err.value.message()
    plain = client.infer("mlp", [x], outputs=[tc.InferRequestedOutput("logits", class_count=0)])
    assert plain.as_numpy("logits").shape == (1, 10)


def test_oversized_message_is_resource_exhausted(
    client: tc.InferenceServerClient, still_serving: None
) -> None:
    rows = MAX_MESSAGE_BYTES // (784 * 4) + 8  # just past the agent's limit
    x = np.zeros((rows, 784), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as err:
        stub_infer(client, raw_request("mlp", [("input", "FP32", [rows, 784], x.tobytes())]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # just under the limit is served
    ok_rows = (MAX_MESSAGE_BYTES - 4096) // (784 * 4)
    out = mlp_infer(client, np.zeros((ok_rows, 784), dtype=np.float32))
    assert out.shape == (ok_rows, 10)


# --------------------------------------------------------------------------------------------
# overload: bounded concurrency and bounded queues answer RESOURCE_EXHAUSTED, nothing else


@pytest.fixture(scope="module")
def slow_package(
    tmp_path_factory: pytest.TempPathFactory, make_package: Callable[..., Path]
) -> Path:
    model = build_slow_onnx(tmp_path_factory.mktemp("slow") / "slow.onnx")
    return make_package("slow", "1", [model])


def _fire_concurrently(address: str, n: int) -> list[grpc.StatusCode]:
    """Send n requests at once (tritonclient async_infer) and return every status code."""
    client = tc.InferenceServerClient(address)
    codes: list[grpc.StatusCode] = []
    done = threading.Event()
    lock = threading.Lock()
    x = np.ones((1, 4), dtype=np.float32)

    def callback(result, error) -> None:
        with lock:
            if error is None:
                np.testing.assert_allclose(result.as_numpy("y"), x)
                codes.append(grpc.StatusCode.OK)
            else:
                name = error.status().removeprefix("StatusCode.")
                codes.append(grpc.StatusCode[name])
            if len(codes) == n:
                done.set()

    for _ in range(n):
        client.async_infer("slow", [infer_input("x", x, "FP32")], callback)
    assert done.wait(30), f"only {len(codes)} of {n} requests answered"
    client.close()
    return codes


def _assert_overload_then_recovery(agent: AgentProcess) -> None:
    codes: list[grpc.StatusCode] = []
    for _ in range(5):  # a slow model makes the first round enough; retry only on a slow start
        codes += _fire_concurrently(agent.address, 12)
        if grpc.StatusCode.RESOURCE_EXHAUSTED in codes:
            break
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    # once the burst is over, requests are served again
    client = tc.InferenceServerClient(agent.address)
    x = np.full((1, 4), 2.0, dtype=np.float32)
    np.testing.assert_allclose(client.infer("slow", [infer_input("x", x, "FP32")]).as_numpy("y"), x)
    client.close()
    rejected = requests_count(agent, model="slow", code="RESOURCE_EXHAUSTED")
    assert rejected == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def _inflight_gauge(agent: AgentProcess) -> float:
    fams = scrape(agent)
    return sample_value(fams["edge_agent_inflight_requests"], "edge_agent_inflight_requests")


def _assert_inflight_gauge_tracks_requests(agent: AgentProcess) -> None:
    """edge_agent_inflight_requests reads 1 while a slow request runs, 0 once it is done."""
    client = tc.InferenceServerClient(agent.address)
    x = np.ones((1, 4), dtype=np.float32)
    seen = 0.0
    # Each try has one slow inference (tens of ms) for a scrape to land in. On a loaded machine a
    # scrape can take longer than the inference, so keep trying for a while instead of N times.
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        done = threading.Event()
        client.async_infer(
            "slow", [infer_input("x", x, "FP32")], lambda result, error, ev=done: ev.set()
        )
        while not done.is_set():
            seen = max(seen, _inflight_gauge(agent))
        if seen:
            break
    client.close()
    assert seen == 1.0
    assert _inflight_gauge(agent) == 0.0


def test_overload_max_inflight_is_resource_exhausted(
    start_agent: Callable[..., AgentProcess], slow_package: Path
) -> None:
    agent = start_agent("inflight", max_inflight_requests=1)
    assert agent.install(slow_package).result.outcome == "COMMITTED"
    _assert_overload_then_recovery(agent)
    _assert_inflight_gauge_tracks_requests(agent)


def test_overload_full_batch_queue_is_resource_exhausted(
    start_agent: Callable[..., AgentProcess], slow_package: Path
) -> None:
    agent = start_agent("queue", models={"slow": {"max_batch_size": 2, "max_queue_size": 1}})
    assert agent.install(slow_package).result.outcome == "COMMITTED"
    _assert_overload_then_recovery(agent)


# --------------------------------------------------------------------------------------------
# health, reflection, metrics


def test_grpc_health_serving(agent: AgentProcess) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_services(agent: AgentProcess) -> None:
    from google.protobuf import descriptor_pb2

    with grpc.insecure_channel(agent.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
        ]
        listing, files = list(stub.ServerReflectionInfo(iter(reqs), timeout=5))
    services = {s.name for s in listing.list_services_response.service}
    assert {"inference.GRPCInferenceService", "edgeagent.v1.AgentService"} <= services
    assert "grpc.health.v1.Health" in services
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in files.file_descriptor_response.file_descriptor_proto
    ]
    (svc,) = [s for p in protos if p.package == "inference" for s in p.service]
    assert {m.name for m in svc.method} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def test_metrics_count_requests(
    agent: AgentProcess, client: tc.InferenceServerClient, mlp_x: np.ndarray
) -> None:
    ok_before = requests_count(agent, model="mlp", version="1", code="OK")
    bad_before = requests_count(agent, model="mlp", code="INVALID_ARGUMENT")
    for _ in range(3):
        mlp_infer(client, mlp_x)
    with pytest.raises(grpc.RpcError):
        stub_infer(client, raw_request("mlp", [("input", "FP32", [1, 5], b"\0" * 20)]))
    deadline = time.monotonic() + 5
    while True:
        ok_after = requests_count(agent, model="mlp", version="1", code="OK")
        bad_after = requests_count(agent, model="mlp", code="INVALID_ARGUMENT")
        if (ok_after, bad_after) == (ok_before + 3, bad_before + 1) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ok_after == ok_before + 3
    assert bad_after == bad_before + 1
    fams = scrape(agent)
    assert (
        sample_value(
            fams["edge_agent_inference_seconds"], "edge_agent_inference_seconds_count", model="mlp"
        )
        >= ok_after
    )
