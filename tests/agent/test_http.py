"""The agent's HTTP/REST transport, end to end: KServe v2 routes with httpx and curl, the public
``tritonclient.http`` client (JSON and binary tensor data), multipart image uploads, Triton's
configuration / statistics / index extensions on both transports, and bad requests.

One agent (a real subprocess, ``http_port`` 0) serves ``mlp``, ``add`` (INT32), ``multi``
(FP64 / INT64 / BOOL) and ``digits``, a small image classifier whose package declares image
preprocessing (grayscale 28x28) and softmax + top-3 with labels. Its body limit is 1 MiB so the
oversized cases need no agent of their own. Every expected figure is computed independently with
onnxruntime and Pillow.

Never import ``protos.gen.inference_pb2`` or ``edge_agent.grpc`` here: tritonclient owns the
``inference`` protobuf package in this process.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as tch
from PIL import Image

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key
from tests.agent.agent_process import AgentProcess
from tests.datasets.digits import digit_png

MAX_BODY = 1 << 20
RNG = np.random.default_rng(99)
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PRE = {"input": "image", "color": "L", "resize": [28, 28], "scale": 1 / 255, "dtype": "FP32"}
POST = {"output": "logits", "softmax": True, "top_k": 3}
BINARY_HEADER = "Inference-Header-Content-Length"

# --------------------------------------------------------------------------------------------
# models and reference answers


def digits_onnx(path: Path) -> Path:
    """image FP32 [N, 28, 28, 1] -> flatten -> @ W[784, 10] + b -> logits [N, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((784, 10)) * 0.1).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(np.array([-1, 784], np.int64), "flat_shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def ort_run(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def by_hand(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return (np.asarray(img, np.float32) * np.float32(1 / 255))[:, :, None]


def expected_probs(model: Path, pngs: list[bytes]) -> np.ndarray:
    logits = ort_run(model, {"image": np.stack([by_hand(p) for p in pngs])})["logits"]
    e = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def parse_topk(row: list) -> list[tuple[float, int, str]]:
    out = []
    for item in row:
        text = item.decode() if isinstance(item, bytes) else item
        score, index, label = text.split(":")
        out.append((float(score), int(index), label))
    return out


def assert_topk(row: list, probs: np.ndarray) -> None:
    best = np.argsort(-probs, kind="stable")[:3]
    got = parse_topk(row)
    assert [(i, label) for _, i, label in got] == [(int(i), LABELS[i]) for i in best]
    np.testing.assert_allclose([s for s, _, _ in got], probs[best], atol=2e-6)


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    rng = random.Random(4)
    return [digit_png(d, rng) for d in (3, 7, 0)]


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], models_dir: Path
) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("http-models")
    digits = digits_onnx(d / "digits.onnx")
    key = load_private_key(keys["private"])
    packages = {}
    for name, artifact, extra in [
        ("mlp", models_dir / "mlp.onnx", {}),
        ("add", models_dir / "add_int.onnx", {}),
        ("multi", models_dir / "multi_dtype.onnx", {}),
        ("digits", digits, {"labels": LABELS, "preprocessing": PRE, "postprocessing": POST}),
    ]:
        spec = BuildSpec(name=name, version="1", artifacts=[ArtifactInput(artifact)], **extra)
        packages[name] = build_package(spec, d / "pkg", key)
    return {"digits_onnx": digits, **{f"pkg_{k}": v for k, v in packages.items()}}


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], models: dict[str, Path]
) -> Iterator[AgentProcess]:
    a = AgentProcess(
        tmp_path_factory.mktemp("http-agent"), [keys["public"]], http_max_body_bytes=MAX_BODY
    )
    a.start()
    try:
        for name in ("mlp", "add", "multi", "digits"):
            r = a.install(models[f"pkg_{name}"])
            assert r.result.outcome == "COMMITTED", r.result
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def http(agent: AgentProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=agent.http_url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[tch.InferenceServerClient]:
    c = tch.InferenceServerClient(agent.http_address)
    yield c
    c.close()


def mlp_json(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def mlp_x() -> np.ndarray:
    return RNG.standard_normal((3, 784)).astype(np.float32)


@pytest.fixture
def still_serving(http: httpx.Client, models_dir: Path, mlp_x: np.ndarray) -> Iterator[None]:
    """After the test: a good request on the same agent still gets the right answer."""
    yield
    r = http.post("/v2/models/mlp/infer", json=mlp_json(mlp_x))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    expected = ort_run(models_dir / "mlp.onnx", {"input": mlp_x})["logits"]
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert http.get("/v2/health/ready").status_code == 200


# --------------------------------------------------------------------------------------------
# every route, plain HTTP


def test_health_routes(http: httpx.Client) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready"):
        r = http.get(path)
        assert (r.status_code, r.content) == (200, b""), path
    assert http.get("/v2/models/mlp/versions/1/ready").status_code == 200
    assert http.get("/v2/models/nope/ready").status_code == 400  # the protocol: 4xx = false
    assert http.get("/v2/models/mlp/versions/9/ready").status_code == 400


def test_server_and_model_metadata(http: httpx.Client) -> None:
    md = http.get("/v2").json()
    assert md["name"] == "edge-agent" and md["version"]
    assert {"binary_tensor_data", "statistics", "model_configuration", "model_repository"} <= set(
        md["extensions"]
    )
    r = http.get("/v2/models/mlp")
    assert r.status_code == 200 and r.headers["edge-variant"]
    assert r.json() == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert http.get("/v2/models/mlp/versions/1").json() == r.json()
    digits = http.get("/v2/models/digits").json()
    assert [o["name"] for o in digits["outputs"]] == ["logits", "logits_topk"]


def test_model_config(http: httpx.Client) -> None:
    cfg = http.get("/v2/models/add/config").json()
    assert cfg["name"] == "add" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 0  # not batched: dims are the full shapes
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [
        ("a", "TYPE_INT32", [-1, 4]),
        ("b", "TYPE_INT32", [-1, 4]),
    ]
    assert [(o["name"], o["data_type"]) for o in cfg["output"]] == [("sum", "TYPE_INT32")]
    assert http.get("/v2/models/add/versions/1/config").json() == cfg


def test_repository_index_and_refused_load(http: httpx.Client) -> None:
    index = http.post("/v2/repository/index").json()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("mlp", "1", "READY"),
        ("add", "1", "READY"),
        ("multi", "1", "READY"),
        ("digits", "1", "READY"),
    }
    assert http.post("/v2/repository/index", json={"ready": True}).json() == index
    r = http.post("/v2/repository/models/mlp/load")
    assert r.status_code == 501 and "InstallPackage" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/nope", 404),
        ("GET", "/v1/models/mlp", 404),
        ("GET", "/v2/models/mlp/explain", 404),
        ("GET", "/v2/models/mlp/infer", 405),
        ("POST", "/v2/models/mlp", 405),
        ("GET", "/v2/repository/index", 405),
        ("DELETE", "/v2/models/mlp", 405),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/mlp/versions/9", 404),
        ("GET", "/v2/models/nope/config", 404),
        ("GET", "/v2/models/nope/stats", 404),
    ],
)
def test_unknown_routes_and_methods(
    http: httpx.Client, still_serving: None, method: str, path: str, status: int
) -> None:
    r = http.request(method, path)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]
    if status == 405:
        assert r.headers["allow"] in ("GET", "POST")


# --------------------------------------------------------------------------------------------
# inference: JSON, binary, tritonclient.http


def test_json_inference_matches_onnxruntime(
    http: httpx.Client, models_dir: Path, mlp_x: np.ndarray
) -> None:
    expected = ort_run(models_dir / "mlp.onnx", {"input": mlp_x})["logits"]
    r = http.post("/v2/models/mlp/versions/1/infer", json=mlp_json(mlp_x, id="req-7"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("mlp", "1", "req-7")
    (out,) = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [3, 10])
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(3, 10), expected, 1e-5)
    # flat data works as well as nested, as the protocol allows
    flat = mlp_json(mlp_x)
    flat["inputs"][0]["data"] = mlp_x.reshape(-1).tolist()
    assert http.post("/v2/models/mlp/infer", json=flat).json()["outputs"][0]["data"] == out["data"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_round_trip(
    client: tch.InferenceServerClient, models_dir: Path, binary: bool
) -> None:
    """binary_data=True sends the tensor after the JSON and asks for binary outputs."""
    x = RNG.standard_normal((4, 784)).astype(np.float32)
    inp = tch.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tch.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="r1")
    resp = result.get_response()
    (meta,) = resp["outputs"]
    assert ("parameters" in meta and meta["parameters"]["binary_data_size"] == 4 * 10 * 4) is binary
    assert ("data" in meta) is not binary
    expected = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    assert resp["id"] == "r1"


def test_tritonclient_http_default_outputs_are_binary(
    client: tch.InferenceServerClient, models_dir: Path
) -> None:
    """Without requested outputs tritonclient sets binary_data_output: every output is binary."""
    x = RNG.standard_normal((1, 784)).astype(np.float32)
    inp = tch.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 40
    expected = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_other_datatypes(client: tch.InferenceServerClient, binary: bool) -> None:
    a = RNG.integers(-(2**30), 2**30, size=(3, 4), dtype=np.int32)
    b = RNG.integers(-(2**30), 2**30, size=(3, 4), dtype=np.int32)
    inputs = []
    for name, arr in (("a", a), ("b", b)):
        i = tch.InferInput(name, list(arr.shape), "INT32")
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    out = [tch.InferRequestedOutput("sum", binary_data=binary)]
    np.testing.assert_array_equal(client.infer("add", inputs, outputs=out).as_numpy("sum"), a + b)

    x = np.array([[1, 2, 3], [-4, 5, 0]], dtype=np.int64)
    inputs = []
    for name, arr, dt in (
        ("x_fp64", x.astype(np.float64) / 3, "FP64"),
        ("x_i64", x, "INT64"),
        ("x_bool", x > 0, "BOOL"),
    ):
        i = tch.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    names = ("y_fp64", "y_i64", "y_bool")
    outs = [tch.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer("multi", inputs, outputs=outs)
    np.testing.assert_array_equal(result.as_numpy("y_fp64"), 2 * (x.astype(np.float64) / 3))
    np.testing.assert_array_equal(result.as_numpy("y_i64"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("y_bool"), ~(x > 0))


def test_mixed_json_and_binary_inputs_and_output_subset(http: httpx.Client) -> None:
    """One input as JSON, one as binary data; one output requested, as JSON."""
    a = np.arange(8, dtype=np.int32).reshape(2, 4)
    b = np.full((2, 4), 10, dtype=np.int32)
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2, 4], "datatype": "INT32", "data": a.tolist()},
                {
                    "name": "b",
                    "shape": [2, 4],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": b.nbytes},
                },
            ],
            "outputs": [{"name": "sum"}],
        }
    ).encode()
    r = http.post(
        "/v2/models/add/infer",
        content=header + b.tobytes(),
        headers={BINARY_HEADER: str(len(header)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert BINARY_HEADER.lower() not in r.headers
    (out,) = r.json()["outputs"]
    np.testing.assert_array_equal(np.array(out["data"]).reshape(2, 4), a + b)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_body(
    client: tch.InferenceServerClient, models_dir: Path, encoding: str
) -> None:
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    inp = tch.InferInput("input", [2, 784], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], request_compression_algorithm=encoding)
    expected = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


def test_tritonclient_http_metadata_config_index(client: tch.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("nope")
    assert "statistics" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("mlp", "1")["inputs"][0]["shape"] == [-1, 784]
    assert client.get_model_config("mlp")["input"][0]["data_type"] == "TYPE_FP32"
    assert {m["name"] for m in client.get_model_repository_index()} >= {"mlp", "digits"}


# --------------------------------------------------------------------------------------------
# images: multipart uploads, BYTES in JSON (base64) and as binary data


def test_multipart_upload_returns_labels(
    http: httpx.Client, models: dict[str, Path], pngs: list[bytes]
) -> None:
    files = [("file", (f"d{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    r = http.post("/v2/models/digits/infer", files=files)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    want = expected_probs(models["digits_onnx"], pngs)
    assert outputs["logits_topk"]["shape"] == [3, 3]
    topk = np.array(outputs["logits_topk"]["data"], dtype=object).reshape(3, 3)
    for row, probs in zip(topk, want, strict=True):
        assert_topk(list(row), probs)
    got = np.array(outputs["logits"]["data"]).reshape(3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_curl_upload_as_documented(
    agent: AgentProcess, models: dict[str, Path], pngs: list[bytes], tmp_path: Path
) -> None:
    """The README's command, verbatim apart from the port."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    png = tmp_path / "digit.png"
    png.write_bytes(pngs[0])
    done = subprocess.run(
        ["curl", "-sS", "-F", f"file=@{png}", f"{agent.http_url}/v2/models/digits/infer"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    outputs = {o["name"]: o for o in json.loads(done.stdout)["outputs"]}
    assert_topk(outputs["logits_topk"]["data"], expected_probs(models["digits_onnx"], pngs[:1])[0])


def test_upload_under_the_input_name_and_errors(http: httpx.Client, still_serving: None) -> None:
    png = digit_png(5, random.Random(1))
    assert http.post("/v2/models/digits/infer", files={"image": png}).status_code == 200
    r = http.post("/v2/models/digits/infer", files={"file": b"definitely not an image"})
    assert r.status_code == 400 and "not a decodable image" in r.json()["error"]
    r = http.post("/v2/models/mlp/infer", files={"file": png})
    assert r.status_code == 400 and "no image preprocessing" in r.json()["error"]
    r = http.post("/v2/models/digits/infer", files={"image": png, "file": png})
    assert r.status_code == 400 and "both" in r.json()["error"]


def test_image_bytes_as_base64_json_and_as_binary_data(
    http: httpx.Client,
    client: tch.InferenceServerClient,
    models: dict[str, Path],
    pngs: list[bytes],
) -> None:
    want = expected_probs(models["digits_onnx"], pngs)
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(pngs)],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(p).decode() for p in pngs],
            }
        ]
    }
    r = http.post("/v2/models/digits/infer", json=doc)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    np.testing.assert_allclose(np.array(outputs["logits"]["data"]).reshape(3, 10), want, 1e-5)

    inp = tch.InferInput("image", [len(pngs)], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object), binary_data=True)
    result = client.infer("digits", [inp])
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-6)
    for row, probs in zip(result.as_numpy("logits_topk"), want, strict=True):
        assert_topk(list(row), probs)


# --------------------------------------------------------------------------------------------
# bad requests: a precise 4xx with {"error": ...}, and the agent keeps serving

_X1 = np.ones((1, 784), np.float32)


def _raw(doc: dict, binary: bytes = b"", length: int | None = None) -> tuple[bytes, dict]:
    header = json.dumps(doc).encode()
    headers = {"content-type": "application/octet-stream"}
    if binary or length is not None:
        headers[BINARY_HEADER] = str(len(header) if length is None else length)
    return header + binary, headers


def _one(name: str, datatype: str, shape: list, **kw: object) -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, **kw}]}


_BINARY_X1 = {"parameters": {"binary_data_size": _X1.nbytes}}
BAD = {
    "not_json": ("mlp", (b"{nope", {}), 400, "not valid JSON"),
    "json_array": ("mlp", (b"[1, 2]", {}), 400, "JSON object"),
    "empty_body": ("mlp", (b"", {}), 400, "empty"),
    "no_inputs": ("mlp", (b'{"inputs": []}', {}), 400, "inputs"),
    "binary_without_header": (
        "mlp",
        (json.dumps(_one("input", "FP32", [1, 784], **_BINARY_X1)).encode() + _X1.tobytes(), {}),
        400,
        "Inference-Header-Content-Length",
    ),
    "header_length_past_body": (
        "mlp",
        _raw(_one("input", "FP32", [1, 784], **_BINARY_X1), b"", length=10**6),
        400,
        "Inference-Header-Content-Length",
    ),
    "binary_too_short": (
        "mlp",
        _raw(_one("input", "FP32", [1, 784], **_BINARY_X1), _X1.tobytes()[:-8]),
        400,
        "remain",
    ),
    "binary_trailing_bytes": (
        "mlp",
        _raw(_one("input", "FP32", [1, 784], **_BINARY_X1), _X1.tobytes() + b"xx"),
        400,
        "follow",
    ),
    "wrong_rank": ("mlp", _raw(_one("input", "FP32", [784], data=[0.0] * 784)), 400, "shape"),
    "wrong_fixed_dim": (
        "mlp",
        _raw(_one("input", "FP32", [1, 783], data=[0.0] * 783)),
        400,
        "shape",
    ),
    "count_mismatch": ("mlp", _raw(_one("input", "FP32", [1, 784], data=[0.0] * 5)), 400, "784"),
    "wrong_dtype": (
        "mlp",
        _raw(_one("input", "FP64", [1, 784], data=[0.0] * 784)),
        400,
        "must be FP32",
    ),
    "unknown_dtype": ("mlp", _raw(_one("input", "FP99", [1, 1], data=[0])), 400, "datatype"),
    "bf16": ("mlp", _raw(_one("input", "BF16", [1, 1], data=[0])), 400, "BF16"),
    "negative_dim": ("mlp", _raw(_one("input", "FP32", [-1, 784], data=[])), 400, "negative"),
    "shape_not_ints": ("mlp", _raw(_one("input", "FP32", ["a"], data=[1])), 400, "shape"),
    "strings_for_fp32": ("mlp", _raw(_one("input", "FP32", [1, 1], data=["x"])), 400, "numbers"),
    "float_for_int32": ("add", _raw(_one("a", "INT32", [1, 4], data=[1.5] * 4)), 400, "integers"),
    "int32_out_of_range": (
        "add",
        _raw(_one("a", "INT32", [1, 4], data=[2**40] * 4)),
        400,
        "out of range",
    ),
    "ragged": ("add", _raw(_one("a", "INT32", [2, 2], data=[[1, 2], [3]])), 400, "regular"),
    "bad_base64": (
        "digits",
        _raw(_one("image", "BYTES", [1], data=["***"], parameters={"content_type": "base64"})),
        400,
        "base64",
    ),
    "unknown_input": ("mlp", _raw(_one("pixels", "FP32", [1, 1], data=[0.0])), 400, "no input"),
    "missing_input": ("add", _raw(_one("a", "INT32", [1, 4], data=[1] * 4)), 400, "missing"),
    "unknown_output": (
        "mlp",
        _raw({**_one("input", "FP32", [1, 784], data=[0.0] * 784), "outputs": [{"name": "p"}]}),
        400,
        "no output",
    ),
    "classification": (
        "mlp",
        _raw(
            {
                **_one("input", "FP32", [1, 784], data=[0.0] * 784),
                "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
            }
        ),
        400,
        "classification",
    ),
    "empty_tensor": ("mlp", _raw(_one("input", "FP32", [0, 784], data=[])), 400, "empty"),
    "unknown_model": ("nope", _raw(_one("input", "FP32", [1, 1], data=[0.0])), 404, "nope"),
    "bad_gzip": ("mlp", (b"not gzip", {"content-encoding": "gzip"}), 400, "decompress"),
    "truncated_gzip": (
        "mlp",
        (gzip.compress(json.dumps(mlp_json(_X1)).encode())[:-12], {"content-encoding": "gzip"}),
        400,
        "truncated",
    ),
    "unknown_encoding": ("mlp", (b"{}", {"content-encoding": "br"}), 415, "br"),
    "multipart_no_boundary": (
        "digits",
        (b"--x\r\n\r\n--x--", {"content-type": "multipart/form-data"}),
        400,
        "boundary",
    ),
    "multipart_unterminated": (
        "digits",
        (
            b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            {"content-type": "multipart/form-data; boundary=x"},
        ),
        400,
        "closing boundary",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_precise_status(
    http: httpx.Client, still_serving: None, case: str
) -> None:
    model, (body, headers), status, fragment = BAD[case]
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"]


def test_unknown_version_is_404(http: httpx.Client, still_serving: None) -> None:
    r = http.post("/v2/models/mlp/versions/9/infer", json=mlp_json(_X1))
    assert r.status_code == 404 and "9" in r.json()["error"]


def test_bad_request_via_tritonclient_reports_status(
    client: tch.InferenceServerClient, still_serving: None
) -> None:
    from tritonclient.utils import InferenceServerException

    inp = tch.InferInput("input", [1, 10], "FP32")
    inp.set_data_from_numpy(np.ones((1, 10), np.float32))
    with pytest.raises(InferenceServerException, match="shape") as err:
        client.infer("mlp", [inp])
    assert err.value.status() == "400"


def test_oversized_body_is_413(http: httpx.Client, still_serving: None) -> None:
    rows = MAX_BODY // (784 * 4) + 8
    x = np.zeros((rows, 784), np.float32)
    body, headers = _raw(
        _one("input", "FP32", [rows, 784], parameters={"binary_data_size": x.nbytes}), x.tobytes()
    )
    r = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 413 and "http_max_body_bytes" in r.json()["error"]

    # chunked: no Content-Length to refuse up front, refused once the body outgrows the limit
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = http.post("/v2/models/mlp/infer", content=chunks(), headers=headers)
    assert r.status_code == 413

    # a small gzip body that inflates past the limit
    bomb = gzip.compress(b"0" * (MAX_BODY + 10))
    r = http.post("/v2/models/mlp/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413

    # just under the limit is served
    ok_rows = (MAX_BODY - 4096) // (784 * 4)
    x = np.zeros((ok_rows, 784), np.float32)
    body, headers = _raw(
        _one("input", "FP32", [ok_rows, 784], parameters={"binary_data_size": x.nbytes}),
        x.tobytes(),
    )
    r = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [ok_rows, 10]


def _exchange(agent: AgentProcess, data: bytes, *, expect: int = 1, wait_for: bytes = b"") -> bytes:
    """Send raw bytes on one connection; read until ``expect`` responses (or ``wait_for``)."""
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while got.count(b"HTTP/1.1 ") < expect or (wait_for and wait_for not in got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_raw_http_edge_cases(agent: AgentProcess, still_serving: None) -> None:
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    # pipelined requests on one connection are answered in order
    assert _exchange(agent, live * 3, expect=3).count(b"HTTP/1.1 200 OK") == 3
    # malformed request line
    assert _exchange(agent, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    # an oversized header block, an overlong URL
    big = b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _exchange(agent, big).startswith(b"HTTP/1.1 431")
    long_url = b"GET /v2/models/" + b"m" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _exchange(agent, long_url).startswith(b"HTTP/1.1 414")
    # Expect: 100-continue is answered before the body is sent
    body = json.dumps(mlp_json(_X1)).encode()
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\nContent-Type: application/json\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=10) as s:
        s.sendall(head)
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    # ... and a body that is too large is refused instead, before it is sent
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    assert _exchange(agent, head).startswith(b"HTTP/1.1 413")


# --------------------------------------------------------------------------------------------
# statistics on both transports


def _mlp_stats(doc: dict) -> dict:
    (entry,) = [m for m in doc["model_stats"] if m["name"] == "mlp"]
    return entry


def test_statistics_move_with_requests(
    http: httpx.Client, client: tch.InferenceServerClient, agent: AgentProcess
) -> None:
    before = _mlp_stats(http.get("/v2/models/mlp/stats").json())
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    for _ in range(3):
        assert http.post("/v2/models/mlp/infer", json=mlp_json(x)).status_code == 200
    grpc_client = tcg.InferenceServerClient(agent.address)
    inp = tcg.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(x[:1])
    grpc_client.infer("mlp", [inp])
    bad = http.post("/v2/models/mlp/infer", json=mlp_json(np.ones((1, 5), np.float32)))
    assert bad.status_code == 400

    after = _mlp_stats(client.get_inference_statistics("mlp", "1"))
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert s1["success"]["count"] == s0["success"]["count"] + 4
    assert s1["fail"]["count"] == s0["fail"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 3 * 2 + 1
    assert after["execution_count"] == before["execution_count"] + 4
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[key]["count"] == s0[key]["count"] + 4
    assert s1["compute_infer"]["ns"] > s0["compute_infer"]["ns"]
    assert s1["success"]["ns"] > s0["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"] > 0
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sizes[2] >= 3 and sizes[1] >= 1

    # the same figures over gRPC (ModelStatistics), and the all-models form on HTTP
    via_grpc = grpc_client.get_inference_statistics("mlp", as_json=True)
    (g,) = via_grpc["model_stats"]
    assert int(g["inference_stats"]["success"]["count"]) == s1["success"]["count"]
    assert int(g["inference_count"]) == after["inference_count"]
    every = http.get("/v2/models/stats").json()
    assert {m["name"] for m in every["model_stats"]} == {"mlp", "add", "multi", "digits"}
    grpc_client.close()


def test_grpc_model_config_and_repository_index(agent: AgentProcess) -> None:
    c = tcg.InferenceServerClient(agent.address)
    cfg = c.get_model_config("digits").config
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        "digits",
        "onnxruntime_onnx",
        "onnxruntime",
        0,
    )
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("image", [-1, 28, 28, 1])]
    assert [o.name for o in cfg.output] == ["logits", "logits_topk"]
    assert cfg.output[1].data_type == tcg.model_config_pb2.TYPE_STRING
    index = c.get_model_repository_index()
    assert {(m.name, m.version, m.state) for m in index.models} >= {("mlp", "1", "READY")}
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        c.get_model_config("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    c.close()


def test_batched_model_config_omits_the_batch_dimension(
    start_agent, models: dict[str, Path]
) -> None:
    a = start_agent("batched", models={"mlp": {"max_batch_size": 8, "max_queue_delay_ms": 1}})
    assert a.install(models["pkg_mlp"]).result.outcome == "COMMITTED"
    cfg = httpx.get(f"{a.http_url}/v2/models/mlp/config", timeout=10).json()
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0]["dims"] == [784] and cfg["output"][0]["dims"] == [10]


# --------------------------------------------------------------------------------------------
# overload over HTTP


def test_overload_is_503_then_recovers(start_agent, make_package, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.agent.test_protocol import build_slow_onnx

    pkg = make_package("slow", "1", [build_slow_onnx(tmp_path / "slow.onnx")])
    a = start_agent("overload", max_inflight_requests=1)
    assert a.install(pkg).result.outcome == "COMMITTED"
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{a.http_url}/v2/models/slow/infer", json=doc, timeout=30)

    responses: list[httpx.Response] = []
    for _ in range(5):  # a slow model makes the first round enough; retry only on a slow start
        with ThreadPoolExecutor(12) as pool:
            responses += pool.map(call, range(12))
        if any(r.status_code == 503 for r in responses):
            break
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 503}, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "in flight" in refused.json()["error"]
    assert call(0).status_code == 200  # the burst is over: served again


def test_accept_encoding_gets_identity(http: httpx.Client) -> None:
    """Responses are never compressed (a device's CPU matters more than its LAN)."""
    r = http.post(
        "/v2/models/mlp/infer", json=mlp_json(_X1), headers={"accept-encoding": "gzip, deflate"}
    )
    assert r.status_code == 200 and "content-encoding" not in r.headers


def test_stop_lets_an_http_request_in_flight_finish(
    start_agent, make_package, tmp_path: Path
) -> None:
    """SIGTERM while a slow inference runs: it is answered, then the agent exits cleanly."""
    import threading
    import time
    import urllib.request

    from tests.agent.test_protocol import build_slow_onnx

    pkg = make_package("slower", "1", [build_slow_onnx(tmp_path / "slower.onnx", layers=24)])
    a = start_agent("graceful")
    assert a.install(pkg).result.outcome == "COMMITTED"
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [3.0] * 4}]}
    result: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: result.append(
            httpx.post(f"{a.http_url}/v2/models/slower/infer", json=doc, timeout=30)
        )
    )
    caller.start()
    metrics = f"http://127.0.0.1:{a.metrics_port}/metrics"
    in_flight = False
    deadline = time.monotonic() + 10
    while not in_flight and time.monotonic() < deadline:
        with urllib.request.urlopen(metrics, timeout=5) as r:
            in_flight = b"edge_agent_inflight_requests 1.0" in r.read()
    assert in_flight
    a.stop()
    caller.join(30)
    assert result and result[0].status_code == 200, result
    assert result[0].json()["outputs"][0]["data"] == [3.0] * 4
    assert a.proc is not None and a.proc.returncode == 0
