"""The generated test models load in both runtimes with the signatures other tests rely on.

If one of these fails, every test built on ``models_dir`` would fail in a confusing way; this is
where the cause shows plainly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import load_generator

# file -> ({input: (onnxruntime type, shape)}, {output: (type, shape)})
ONNX_SIGNATURES = {
    "mlp.onnx": (
        {"input": ("tensor(float)", ["batch", 784])},
        {"logits": ("tensor(float)", ["batch", 10])},
    ),
    "mlp_v2.onnx": (
        {"input": ("tensor(float)", ["batch", 784])},
        {"logits": ("tensor(float)", ["batch", 10])},
    ),
    "add_int.onnx": (
        {"a": ("tensor(int32)", ["batch", 4]), "b": ("tensor(int32)", ["batch", 4])},
        {"sum": ("tensor(int32)", ["batch", 4])},
    ),
    "multi_dtype.onnx": (
        {
            "x_fp64": ("tensor(double)", ["batch", 3]),
            "x_i64": ("tensor(int64)", ["batch", 3]),
            "x_bool": ("tensor(bool)", ["batch", 3]),
        },
        {
            "y_fp64": ("tensor(double)", ["batch", 3]),
            "y_i64": ("tensor(int64)", ["batch", 3]),
            "y_bool": ("tensor(bool)", ["batch", 3]),
        },
    ),
}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def digits(batch: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 784)).astype(np.float32)


def run_mlp_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_the_generator_writes_what_the_fixture_promises(models_dir: Path) -> None:
    names = {spec.filename for spec in load_generator().selected(with_cnn=False)}
    assert names == {*ONNX_SIGNATURES, "mlp.tflite"}
    assert all((models_dir / name).is_file() for name in names)


@pytest.mark.parametrize("filename", sorted(ONNX_SIGNATURES))
def test_onnx_signature(models_dir: Path, filename: str) -> None:
    inputs, outputs = ONNX_SIGNATURES[filename]
    sess = session(models_dir / filename)
    assert {i.name: (i.type, i.shape) for i in sess.get_inputs()} == inputs
    assert {o.name: (o.type, o.shape) for o in sess.get_outputs()} == outputs


def test_mlp_versions_give_different_logits(models_dir: Path) -> None:
    x = digits(4)
    (v1,) = session(models_dir / "mlp.onnx").run(None, {"input": x})
    (v2,) = session(models_dir / "mlp_v2.onnx").run(None, {"input": x})
    assert v1.shape == v2.shape == (4, 10)
    assert np.abs(v1 - v2).max() > 0.1


def test_add_int_adds_int32(models_dir: Path) -> None:
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    b = np.full((3, 4), -5, dtype=np.int32)
    (total,) = session(models_dir / "add_int.onnx").run(None, {"a": a, "b": b})
    assert total.dtype == np.int32
    np.testing.assert_array_equal(total, a + b)


def test_multi_dtype_round_trips_each_dtype(models_dir: Path) -> None:
    feeds = {
        "x_fp64": np.array([[0.1, -2.5, 1e300], [0.0, 3.0, -1.0]], dtype=np.float64),
        "x_i64": np.array([[2**40, -1, 0], [7, 8, 9]], dtype=np.int64),
        "x_bool": np.array([[True, False, True], [False, False, True]]),
    }
    y_fp64, y_i64, y_bool = session(models_dir / "multi_dtype.onnx").run(None, feeds)
    assert (y_fp64.dtype, y_i64.dtype, y_bool.dtype) == (np.float64, np.int64, np.bool_)
    np.testing.assert_array_equal(y_fp64, feeds["x_fp64"] * 2)
    np.testing.assert_array_equal(y_i64, feeds["x_i64"] + 1)
    np.testing.assert_array_equal(y_bool, ~feeds["x_bool"])


def test_tflite_mlp_has_a_dynamic_batch_and_the_onnx_weights(models_dir: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(models_dir / "mlp.tflite"))
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and list(inp["shape_signature"]) == [-1, 784]
    assert out["dtype"] == np.float32 and list(out["shape_signature"]) == [-1, 10]
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["input"], "outputs": ["logits"]}
    }

    x = digits(3)
    logits = run_mlp_tflite(models_dir / "mlp.tflite", x)
    (reference,) = session(models_dir / "mlp.onnx").run(None, {"input": x})
    assert logits.shape == (3, 10)
    np.testing.assert_allclose(logits, reference, atol=1e-4)


@pytest.mark.parametrize("filename", sorted(ONNX_SIGNATURES))
def test_onnx_models_are_reproducible(models_dir: Path, filename: str) -> None:
    """Rebuilding gives the same bytes: the files on disk are current and seeds are fixed."""
    generator = load_generator()
    (spec,) = [s for s in generator.MODELS if s.filename == filename]
    assert spec.build() == (models_dir / filename).read_bytes()
