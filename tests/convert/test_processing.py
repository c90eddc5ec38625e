"""Manifest-declared pre/post-processing: JPEG/PNG bytes in, softmax + top-k out.

Every figure is checked against the same pipeline written out by hand (Pillow + numpy +
onnxruntime). The agent runs as a subprocess; the client is the public tritonclient.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.processing import Postprocessing, Preprocessing, top_k
from model_packager.signing import load_private_key
from tests.agent.agent_process import AgentProcess

LABELS = ["cat", "dog", "fish", "bird"]
PRE = {
    "input": "image",
    "decode": "image",
    "color": "RGB",
    "resize": [8, 8],
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "layout": "NHWC",
    "dtype": "FP32",
}
POST = {"output": "logits", "softmax": True, "top_k": 2}


def tiny_image_model(path: Path) -> Path:
    """image FP32 [N, 8, 8, 3] -> mean over H, W -> [N, 3] @ W[3, 4] -> logits [N, 4]."""
    w = np.array([[2.0, -1.0, 0.5, 0.0], [-1.0, 2.0, 0.0, 0.5], [0.5, 0.0, 2.0, -1.0]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(w, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def by_hand(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
    x = np.asarray(img, np.float32) / 255.0
    x = (x - np.array(PRE["mean"], np.float32)) / np.array(PRE["std"], np.float32)
    return x.astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    rng = np.random.default_rng(3)
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 220
    noisy = rng.integers(0, 255, (17, 13, 3), dtype=np.uint8)
    return [encode(red, "PNG"), encode(noisy, "JPEG"), encode(noisy, "PNG")]


def test_preprocessing_matches_the_manual_pipeline(pictures: list[bytes]) -> None:
    pre = Preprocessing.from_dict(PRE)
    got = pre.apply(np.array(pictures, dtype=object))
    want = np.stack([by_hand(p) for p in pictures])
    assert got.shape == (3, 8, 8, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    nchw = Preprocessing.from_dict({**PRE, "layout": "NCHW"}).apply(
        np.array(pictures[:1], dtype=object)
    )
    np.testing.assert_allclose(nchw[0], want[0].transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_postprocessing_softmax_and_topk() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], np.float32)
    out = Postprocessing.from_dict(POST).apply({"logits": logits}, LABELS)
    np.testing.assert_allclose(out["logits"], softmax(logits), rtol=1e-6)
    p = softmax(logits)[0]
    assert list(out["logits_topk"][0]) == [f"{p[1]:f}:1:dog".encode(), f"{p[2]:f}:2:fish".encode()]
    assert top_k(logits, 9, None).shape == (1, 4)


def test_bad_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="mean needs 1 or 3 values"):
        Preprocessing.from_dict({**PRE, "mean": [0.1, 0.2]})


@pytest.fixture(scope="module")
def image_agent(
    tmp_path_factory: pytest.TempPathFactory, convert_keys: dict[str, Path]
) -> Iterator[tuple[AgentProcess, Path]]:
    d = tmp_path_factory.mktemp("image-agent")
    model = tiny_image_model(d / "tiny.onnx")
    pkg = build_package(
        BuildSpec(
            name="tiny",
            version="1",
            artifacts=[ArtifactInput(model)],
            labels=LABELS,
            preprocessing=PRE,
            postprocessing=POST,
        ),
        d / "pkg",
        load_private_key(convert_keys["private"]),
    )
    agent = AgentProcess(d / "agent", [convert_keys["public"]]).start()
    r = agent.install(pkg)
    assert r.result.outcome == "COMMITTED", r
    yield agent, model
    agent.stop()


def test_agent_image_bytes_match_manual_pipeline(
    image_agent: tuple[AgentProcess, Path], pictures: list[bytes]
) -> None:
    import tritonclient.grpc as tc

    agent, model = image_agent
    client = tc.InferenceServerClient(agent.address)
    md = client.get_model_metadata("tiny")
    assert [o.name for o in md.outputs] == ["logits", "logits_topk"]

    inp = tc.InferInput("image", [len(pictures)], "BYTES")
    inp.set_data_from_numpy(np.array(pictures, dtype=object))
    result = client.infer("tiny", [inp])
    probs = result.as_numpy("logits")
    topk = result.as_numpy("logits_topk")

    x = np.stack([by_hand(p) for p in pictures])
    logits = ort.InferenceSession(str(model)).run(["logits"], {"image": x})[0]
    want = softmax(logits)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    for row, p in zip(topk, want, strict=True):
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        best = np.argsort(-p)[:2]
        assert [(int(i), label) for _, i, label in parsed] == [(i, LABELS[i]) for i in best]
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], p[best], atol=2e-6)

    # A tensor client still sends the float tensor directly.
    t = tc.InferInput("image", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    direct = client.infer("tiny", [t], outputs=[tc.InferRequestedOutput("logits_topk")])
    assert [o.name for o in direct.get_response().outputs] == ["logits_topk"]
    client.close()


def test_agent_rejects_undecodable_bytes(image_agent: tuple[AgentProcess, Path]) -> None:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    agent, _ = image_agent
    client = tc.InferenceServerClient(agent.address)
    inp = tc.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"definitely not an image"], dtype=object))
    with pytest.raises(InferenceServerException, match="not a decodable image"):
        client.infer("tiny", [inp])
    client.close()
