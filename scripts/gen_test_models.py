"""Generate the small, real models the test suite and the benchmark run.

Why generate rather than download: the suite must run offline and the models must be exactly
reproducible, so every weight comes from a fixed numpy / Keras seed and every file is built here
from code. Two runs write byte-identical files.

What is written (see ``MODELS``):

- ``mlp.onnx``: MLP 784-256-10, ``input`` FP32 [batch, 784] -> relu -> ``logits`` FP32 [batch, 10].
- ``mlp_v2.onnx``: the same architecture with other weights, the "new version" in hot-swap tests.
- ``add_int.onnx``: ``a`` + ``b`` INT32 [batch, 4] -> ``sum`` INT32, for typed-contents tests.
- ``multi_dtype.onnx``: ``x_fp64`` -> ``y_fp64 = 2x``, ``x_i64`` -> ``y_i64 = x + 1``,
  ``x_bool`` -> ``y_bool = not x``, all [batch, 3], for the remaining OIP datatypes.
- ``mlp.tflite``: the MLP of ``mlp.onnx`` with the *same* weights, through the TFLite converter, so
  ONNX/TFLite parity can be asserted. Input [-1, 784] (dynamic batch), signature ``serving_default``
  with input ``input`` and output ``logits``.
- ``cnn.onnx`` (only with ``--with-cnn``): Keras MobileNetV2 (random init, nothing downloaded),
  converted with tf2onnx, NCHW input ``input`` [batch, 3, 224, 224] -> ``logits`` [batch, 1000].
  The transpose to Keras' NHWC sits inside the converted function, so clients send the usual
  PyTorch/ONNX-style layout. Used by the benchmark only: it takes seconds and weighs ~14 MB.

Every model is loaded and run (onnxruntime / LiteRT) before it is written, so a broken file never
lands on disk. Files that exist are kept unless ``--force``; a ``.generator-version`` stamp in the
output folder makes a stale set (written by an older version of this script) regenerate by itself.

Importing this module is cheap (stdlib + numpy): ``onnx``, ``onnxruntime`` and above all
TensorFlow (seconds to import) are imported inside the functions that need them. That lets
``tests/conftest.py`` import it to ask what is missing without paying for TensorFlow, and keeps
TensorFlow out of the test process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / ".models"

# Bump when any model below changes: existing output folders then regenerate on the next run.
GENERATOR_VERSION = "1"
VERSION_FILE = ".generator-version"

OPSET = 17
# IR 8 is the lowest IR version that carries opset 17; every onnxruntime >= 1.13 reads it, so the
# files also load on devices with an older runtime than the one in this venv.
IR_VERSION = 8
BATCH = "batch"  # the symbolic name of every dynamic batch dimension

MLP_SEED = 0
MLP_V2_SEED = 1
CNN_SEED = 0


# --------------------------------------------------------------------------------------------
# Shared weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlpWeights:
    """Weights of the 784-256-10 MLP, laid out as ``x @ w + b`` (ONNX Gemm, TF matmul)."""

    w1: np.ndarray  # [784, 256]
    b1: np.ndarray  # [256]
    w2: np.ndarray  # [256, 10]
    b2: np.ndarray  # [10]

    @classmethod
    def from_seed(cls, seed: int) -> MlpWeights:
        """He-initialised weights so activations neither vanish nor explode across the layers."""
        rng = np.random.default_rng(seed)

        def draw(shape: tuple[int, ...], scale: float) -> np.ndarray:
            # Cast after scaling: under NEP 50 a float32 array times a numpy float64 is float64.
            return (rng.standard_normal(shape) * scale).astype(np.float32)

        return cls(
            w1=draw((784, 256), np.sqrt(2.0 / 784)),
            b1=draw((256,), 0.01),
            w2=draw((256, 10), np.sqrt(2.0 / 256)),
            b2=draw((10,), 0.01),
        )

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The MLP in plain numpy: the ground truth the converted models are checked against."""
        return np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2


# --------------------------------------------------------------------------------------------
# ONNX models (onnx.helper; no TensorFlow)
# --------------------------------------------------------------------------------------------


def _onnx_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph with the fixed opset / IR version and validate it."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-inference scripts/gen_test_models.py",
        producer_version=GENERATOR_VERSION,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mlp_onnx(seed: int) -> bytes:
    """MLP 784-256-10 as two Gemm nodes with a Relu between them."""
    from onnx import TensorProto, helper, numpy_helper

    w = MlpWeights.from_seed(seed)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"], name="fc1"),
            helper.make_node("Relu", ["hidden"], ["hidden_relu"], name="relu1"),
            helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"], name="fc2"),
        ],
        name=f"mlp_seed{seed}",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, 784])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, 10])],
        initializer=[
            numpy_helper.from_array(w.w1, "w1"),
            numpy_helper.from_array(w.b1, "b1"),
            numpy_helper.from_array(w.w2, "w2"),
            numpy_helper.from_array(w.b2, "b2"),
        ],
    )
    return _onnx_model(graph).SerializeToString()


def build_add_int_onnx() -> bytes:
    """``sum = a + b`` on INT32 [batch, 4]: exercises int_contents in the OIP converters."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes=[helper.make_node("Add", ["a", "b"], ["sum"], name="add")],
        name="add_int",
        inputs=[
            helper.make_tensor_value_info("a", TensorProto.INT32, [BATCH, 4]),
            helper.make_tensor_value_info("b", TensorProto.INT32, [BATCH, 4]),
        ],
        outputs=[helper.make_tensor_value_info("sum", TensorProto.INT32, [BATCH, 4])],
    )
    return _onnx_model(graph).SerializeToString()


def build_multi_dtype_onnx() -> bytes:
    """FP64, INT64 and BOOL through one model: fp64_contents, int64_contents, bool_contents."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes=[
            helper.make_node("Mul", ["x_fp64", "two"], ["y_fp64"], name="double"),
            helper.make_node("Add", ["x_i64", "one"], ["y_i64"], name="increment"),
            helper.make_node("Not", ["x_bool"], ["y_bool"], name="negate"),
        ],
        name="multi_dtype",
        inputs=[
            helper.make_tensor_value_info("x_fp64", TensorProto.DOUBLE, [BATCH, 3]),
            helper.make_tensor_value_info("x_i64", TensorProto.INT64, [BATCH, 3]),
            helper.make_tensor_value_info("x_bool", TensorProto.BOOL, [BATCH, 3]),
        ],
        outputs=[
            helper.make_tensor_value_info("y_fp64", TensorProto.DOUBLE, [BATCH, 3]),
            helper.make_tensor_value_info("y_i64", TensorProto.INT64, [BATCH, 3]),
            helper.make_tensor_value_info("y_bool", TensorProto.BOOL, [BATCH, 3]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float64), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    return _onnx_model(graph).SerializeToString()


def run_onnx(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a serialized ONNX model once on the CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check_mlp_onnx(seed: int) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        x = np.random.default_rng(100).standard_normal((3, 784)).astype(np.float32)
        (logits,) = run_onnx(data, {"input": x})
        np.testing.assert_allclose(logits, MlpWeights.from_seed(seed).reference(x), atol=1e-4)

    return check


def _check_add_int(data: bytes) -> None:
    a = np.arange(8, dtype=np.int32).reshape(2, 4)
    (total,) = run_onnx(data, {"a": a, "b": a})
    assert total.dtype == np.int32 and (total == 2 * a).all()


def _check_multi_dtype(data: bytes) -> None:
    x_fp64 = np.array([[0.5, -1.0, 2.0]], dtype=np.float64)
    x_i64 = np.array([[1, -2, 2**40]], dtype=np.int64)
    x_bool = np.array([[True, False, True]])
    y_fp64, y_i64, y_bool = run_onnx(data, {"x_fp64": x_fp64, "x_i64": x_i64, "x_bool": x_bool})
    assert (y_fp64 == 2 * x_fp64).all() and (y_i64 == x_i64 + 1).all() and (y_bool == ~x_bool).all()


# --------------------------------------------------------------------------------------------
# TensorFlow-based models (imported lazily: TensorFlow takes seconds to import)
# --------------------------------------------------------------------------------------------


def _import_tensorflow():
    """Import TensorFlow quietly, on the CPU, with a clear error when it is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # no GPU probing noise or surprises
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "gen-test-models: TensorFlow is needed for mlp.tflite / cnn.onnx; "
            'install the dev extras: scripts/setup (pip install -e ".[dev]")'
        ) from exc
    return tf


def build_mlp_tflite(seed: int) -> bytes:
    """The ONNX MLP's exact weights through the TFLite converter, with a dynamic batch.

    A ``tf.Module`` with an explicit signature (rather than a Keras model) names the signature's
    input ``input`` and output ``logits``, matching the ONNX model; the converter fuses each
    matmul + bias (+ relu) into one FULLY_CONNECTED op, as it would for Keras Dense layers.
    """
    tf = _import_tensorflow()
    w = MlpWeights.from_seed(seed)

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.b1 = tf.constant(w.w1), tf.constant(w.b1)
            self.w2, self.b2 = tf.constant(w.w2), tf.constant(w.b2)

        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="input")])
        def serve(self, x):
            hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
            return {"logits": tf.matmul(hidden, self.w2) + self.b2}

    module = Mlp()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    return converter.convert()


def _check_mlp_tflite(seed: int) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=data)
        (inp,) = interpreter.get_input_details()
        (out,) = interpreter.get_output_details()
        assert list(inp["shape_signature"]) == [-1, 784], inp["shape_signature"]
        interpreter.resize_tensor_input(inp["index"], [3, 784])
        interpreter.allocate_tensors()
        x = np.random.default_rng(100).standard_normal((3, 784)).astype(np.float32)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        logits = interpreter.get_tensor(out["index"])
        np.testing.assert_allclose(logits, MlpWeights.from_seed(seed).reference(x), atol=1e-4)

    return check


def build_cnn_onnx() -> bytes:
    """MobileNetV2 (random init) via tf2onnx, NCHW in, 1000 logits out.

    ``from_function`` rather than ``from_keras``: tf2onnx's Keras entry point does not handle
    Keras 3 models. The function transposes NCHW -> NHWC before calling the model.
    """
    tf = _import_tensorflow()
    import keras
    import tf2onnx

    keras.utils.set_random_seed(CNN_SEED)
    net = keras.applications.MobileNetV2(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None
    )

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 224, 224], tf.float32, name="input")])
    def serve(x):
        return {"logits": net(tf.transpose(x, [0, 2, 3, 1]), training=False)}

    model, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=OPSET
    )
    # tf2onnx names dynamic dimensions "unk__N"; give the batch the same name as the other models.
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH
    model.ir_version = IR_VERSION
    _canonicalise_initializer_names(model)
    return model.SerializeToString()


def _canonicalise_initializer_names(model: onnx.ModelProto) -> None:
    """Make tf2onnx's output byte-reproducible.

    tf2onnx merges identical constants (every Relu6 bound, every identity batch-norm scale) and
    which duplicate's name survives varies from run to run, though the values never do. Naming
    each initializer after its first consumer (``<node>/input<k>``; node names are stable) and
    ordering initializers by first use makes two runs write the same bytes.
    """
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    renamed: dict[str, str] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in initializers and name not in renamed:
                renamed[name] = f"{node.name}/input{k}"
        node.input[:] = [renamed.get(name, name) for name in node.input]
    unused = sorted(set(initializers) - set(renamed))
    ordered = [*renamed, *unused]
    for name in ordered:
        initializers[name].name = renamed.get(name, name)
    tensors = [initializers[name] for name in ordered]
    del model.graph.initializer[:]
    model.graph.initializer.extend(tensors)


def _check_cnn(data: bytes) -> None:
    x = np.random.default_rng(100).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (logits,) = run_onnx(data, {"input": x})
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


# --------------------------------------------------------------------------------------------
# Catalogue and writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One output file: how to build it and how to prove the result loads and computes."""

    filename: str
    build: Callable[[], bytes]
    check: Callable[[bytes], None]
    needs_tensorflow: bool = False
    optional: bool = False  # only written with --with-cnn


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("mlp.onnx", lambda: build_mlp_onnx(MLP_SEED), _check_mlp_onnx(MLP_SEED)),
    ModelSpec("mlp_v2.onnx", lambda: build_mlp_onnx(MLP_V2_SEED), _check_mlp_onnx(MLP_V2_SEED)),
    ModelSpec("add_int.onnx", build_add_int_onnx, _check_add_int),
    ModelSpec("multi_dtype.onnx", build_multi_dtype_onnx, _check_multi_dtype),
    ModelSpec(
        "mlp.tflite",
        lambda: build_mlp_tflite(MLP_SEED),
        _check_mlp_tflite(MLP_SEED),
        needs_tensorflow=True,
    ),
    ModelSpec("cnn.onnx", build_cnn_onnx, _check_cnn, needs_tensorflow=True, optional=True),
)


def selected(with_cnn: bool) -> list[ModelSpec]:
    """The models a run produces: all of them with ``--with-cnn``, else the quick set."""
    return [spec for spec in MODELS if with_cnn or not spec.optional]


def is_current(out_dir: Path) -> bool:
    """Whether ``out_dir`` was written by this version of the generator."""
    stamp = out_dir / VERSION_FILE
    return stamp.is_file() and stamp.read_text().strip() == GENERATOR_VERSION


def missing(out_dir: Path, with_cnn: bool = False) -> list[str]:
    """Filenames that a run would (re)write: absent files, or all of them when the set is stale."""
    current = is_current(out_dir)
    return [
        spec.filename
        for spec in selected(with_cnn)
        if not current or not (out_dir / spec.filename).is_file()
    ]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temp file + rename, so a concurrent reader (or run) never sees half a model."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(out_dir: Path, *, force: bool = False, with_cnn: bool = False) -> list[Path]:
    """Build, check and write the selected models into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = selected(with_cnn)
    todo = {spec.filename for spec in specs} if force else set(missing(out_dir, with_cnn))
    written: list[Path] = []
    for spec in specs:
        path = out_dir / spec.filename
        if spec.filename not in todo:
            print(f"kept     {path}")
            continue
        started = time.perf_counter()
        data = spec.build()
        spec.check(data)
        _write_atomically(path, data)
        written.append(path)
        print(f"wrote    {path}  ({len(data):,} bytes, {time.perf_counter() - started:.1f}s)")
    _write_atomically(out_dir / VERSION_FILE, f"{GENERATOR_VERSION}\n".encode())
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``scripts/gen-test-models``)."""
    parser = argparse.ArgumentParser(
        prog="gen-test-models",
        description="Generate the deterministic test models (ONNX, TFLite); nothing is downloaded.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument(
        "--with-cnn",
        action="store_true",
        help="also write cnn.onnx (MobileNetV2, for the benchmark; slower, needs tf2onnx)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the files a run would write, and exit"
    )
    args = parser.parse_args(argv)

    if args.list:
        for spec in selected(args.with_cnn):
            print(spec.filename)
        return 0
    started = time.perf_counter()
    written = generate(args.out, force=args.force, with_cnn=args.with_cnn)
    print(f"{len(written)} model(s) written in {time.perf_counter() - started:.1f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
