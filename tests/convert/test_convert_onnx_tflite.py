"""ONNX -> TFLite through .venv-onnx2tf, created by scripts/setup-onnx2tf as the suite runs.

The model is a small conv net written with ``onnx.helper`` (channels-first input, Conv, Relu,
pooling, Gemm, Softmax) with seeded random weights. The TFLite variants are gated against
onnxruntime running the ONNX file, and loaded by LiteRT the way a device does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_packager.archive import extract_package, open_package
from model_packager.convert import ConversionError, ConvertSpec, convert
from model_packager.runtimes import RuntimeOptions, get_runtime
from tests.convert.conftest import venv_from_setup_script


@pytest.fixture(scope="session")
def onnx2tf_python() -> Path:
    """The onnx2tf environment; created by scripts/setup-onnx2tf when missing (never skipped)."""
    return venv_from_setup_script("setup-onnx2tf", ".venv-onnx2tf", timeout=1500)


def small_convnet(path: Path, seed: int = 3) -> Path:
    """image [N, 3, 16, 16] -> Conv 3x3 (8) -> Relu -> MaxPool 2 -> Conv 3x3 (8) -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm (4) -> Softmax -> probs [N, 4]."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8),
            weight("w2", 8, 8, 3, 3),
            weight("b2", 8),
            weight("w3", 4, 8),
            weight("b3", 4),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_convnet_converts_to_tflite_with_parity(onnx2tf_python: Path, tmp_path: Path) -> None:
    model = small_convnet(tmp_path / "convnet.onnx")
    report = convert(
        ConvertSpec(
            source=model,
            name="convnet",
            version="1",
            targets=["onnx-fp32", "tflite-fp32", "tflite-fp16", "tflite-int8"],
        ),
        tmp_path / "out",
    )
    assert report.framework == "onnxruntime"
    assert [v.status for v in report.variants] == ["kept"] * 4, report.table()
    assert report.package is not None
    pkg = open_package(report.package)
    m = pkg.manifest
    assert [t.name for t in m.inputs] == ["image"] and m.inputs[0].shape == [-1, 3, 16, 16]
    fp32 = m.variant("tflite-fp32").parity
    assert fp32 is not None and fp32.reference == "onnxruntime" and fp32.max_abs_error < 1e-4
    fp16 = m.variant("tflite-fp16").parity
    assert fp16 is not None and fp16.top1_agreement is not None and fp16.top1_agreement >= 0.95
    int8 = m.variant("tflite-int8")
    assert int8.precision == "int8" and int8.parity is not None
    assert int8.parity.top1_agreement is not None and int8.parity.top1_agreement >= 0.98

    # LiteRT alone (a LiteRT-only device) answers the ONNX model's question, channels first.
    extracted = extract_package(pkg, tmp_path / "pkg")
    artifact = extracted / m.variant("tflite-fp32").artifact.path
    tflite = get_runtime("tflite").load(artifact, RuntimeOptions())
    onnx_rt = get_runtime("onnx").load(model, RuntimeOptions())
    try:
        x = np.random.default_rng(9).normal(size=(5, 3, 16, 16)).astype(np.float32)
        name = tflite.inputs[0].name
        got = next(iter(tflite.infer({name: x}).values()))
        want = onnx_rt.infer({"image": x})["probs"]
        np.testing.assert_allclose(got, want, atol=1e-4)
    finally:
        tflite.close()
        onnx_rt.close()


def test_missing_onnx2tf_venv_drops_the_tflite_target_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_ONNX2TF_PYTHON", str(tmp_path / "nowhere" / "python"))
    model = small_convnet(tmp_path / "convnet.onnx")
    report = convert(
        ConvertSpec(source=model, name="c", version="1", targets=["onnx-fp32", "tflite-fp32"]),
        tmp_path / "out",
    )
    dropped = {v.name: v for v in report.variants if v.status == "dropped"}
    assert list(dropped) == ["tflite-fp32"]
    assert "scripts/setup-onnx2tf" in (dropped["tflite-fp32"].error or "")
    with pytest.raises(ConversionError, match="setup-onnx2tf"):
        convert(
            ConvertSpec(
                source=model,
                name="c",
                version="2",
                targets=["tflite-fp32"],
                on_parity_fail="fail",
            ),
            tmp_path / "out2",
        )
