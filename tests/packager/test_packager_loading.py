"""Choosing a variant for this machine, and the runtime registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_packager.errors import InferenceError, ModelLoadError, RuntimeUnavailable
from model_packager.loading import rank_variants
from model_packager.manifest import FileRef, Manifest, Provenance, TensorModel, Variant
from model_packager.runtimes import (
    LoadedModel,
    RuntimeOptions,
    available_runtimes,
    get_runtime,
    runtime_names,
)


def _variant(name: str, runtime: str) -> Variant:
    ext = "onnx" if runtime == "onnx" else "tflite"
    return Variant(
        name=name,
        runtime=runtime,  # type: ignore[arg-type]
        artifact=FileRef(path=f"artifacts/{name}.{ext}", sha256="0" * 64, size=1),
        golden=FileRef(path=f"golden/{name}.npz", sha256="0" * 64, size=1),
    )


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest(
        name="m",
        version="1",
        inputs=[TensorModel(name="input", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorModel(name="logits", datatype="FP32", shape=[-1, 2])],
        variants=[
            _variant("onnx-fp32", "onnx"),
            _variant("tflite-fp32", "tflite"),
            _variant("onnx-int8", "onnx"),
            _variant("tflite-int8", "tflite"),
        ],
        provenance=Provenance(tool="t", created_at="now"),
    )


def names(variants: list[Variant]) -> list[str]:
    return [v.name for v in variants]


BOTH = ("onnx", "tflite")


def test_package_order_without_preference(manifest: Manifest) -> None:
    assert names(rank_variants(manifest, runtimes=BOTH)) == [
        "onnx-fp32",
        "tflite-fp32",
        "onnx-int8",
        "tflite-int8",
    ]


def test_preference_by_runtime(manifest: Manifest) -> None:
    assert names(rank_variants(manifest, ["tflite"], BOTH)) == [
        "tflite-fp32",
        "tflite-int8",
        "onnx-fp32",
        "onnx-int8",
    ]


def test_preference_by_variant_name(manifest: Manifest) -> None:
    assert names(rank_variants(manifest, ["tflite-int8", "onnx-int8"], BOTH)) == [
        "tflite-int8",
        "onnx-int8",
        "onnx-fp32",
        "tflite-fp32",
    ]


def test_mixed_preference_first_match_wins(manifest: Manifest) -> None:
    # A variant named first beats the runtime listed second; unknown names are ignored.
    ranked = rank_variants(manifest, ["no-such", "onnx-int8", "tflite"], BOTH)
    assert names(ranked) == ["onnx-int8", "tflite-fp32", "tflite-int8", "onnx-fp32"]


def test_unavailable_runtimes_are_skipped(manifest: Manifest) -> None:
    assert names(rank_variants(manifest, ["tflite"], ["onnx"])) == ["onnx-fp32", "onnx-int8"]
    assert names(rank_variants(manifest, ["tflite-int8"], ["tflite"])) == [
        "tflite-int8",
        "tflite-fp32",
    ]
    # A preferred variant whose runtime is missing is not offered.
    assert "tflite-int8" not in names(rank_variants(manifest, ["tflite-int8"], ["onnx"]))


def test_nothing_runs_here(manifest: Manifest) -> None:
    with pytest.raises(RuntimeUnavailable, match="no variant of m runs here") as info:
        rank_variants(manifest, runtimes=[])
    assert "runtimes here: none" in str(info.value)
    assert "onnx-fp32, tflite-fp32" in str(info.value)
    with pytest.raises(RuntimeUnavailable, match="runtimes here: tensorrt"):
        rank_variants(manifest, runtimes=["tensorrt"])
    assert isinstance(info.value, ModelLoadError)


def test_default_runtimes_are_the_installed_ones(manifest: Manifest) -> None:
    # This environment has both onnxruntime and LiteRT (the dev extra installs them).
    assert sorted(available_runtimes()) == ["onnx", "tflite"]
    assert rank_variants(manifest) == rank_variants(manifest, runtimes=BOTH)


def test_registry() -> None:
    assert set(runtime_names()) == {"onnx", "tflite"}
    assert get_runtime("onnx").name == "onnx"
    assert get_runtime("tflite").name == "tflite"
    with pytest.raises(RuntimeUnavailable, match="no runtime named 'tensorrt'"):
        get_runtime("tensorrt")


def _load(path: Path, runtime: str) -> LoadedModel:
    return get_runtime(runtime).load(path, RuntimeOptions(intra_op_threads=1))


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_runtime_signature_and_batches(runtime: str, onnx_model: Path, tflite_model: Path) -> None:
    model = _load(onnx_model if runtime == "onnx" else tflite_model, runtime)
    try:
        [inp], [out] = model.inputs, model.outputs
        assert (inp.datatype, inp.shape) == ("FP32", (-1, 784))
        assert (out.datatype, out.shape) == ("FP32", (-1, 10))
        rng = np.random.default_rng(1)
        # Different batch sizes in a row (the TFLite backend resizes its interpreter).
        for n in (1, 3, 1, 8):
            x = rng.standard_normal((n, 784)).astype(np.float32)
            y = model.infer({inp.name: x})[out.name]
            assert y.shape == (n, 10) and y.dtype == np.float32
    finally:
        model.close()


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_runtime_errors_are_inference_errors(
    runtime: str, onnx_model: Path, tflite_model: Path
) -> None:
    model = _load(onnx_model if runtime == "onnx" else tflite_model, runtime)
    try:
        with pytest.raises(InferenceError):
            model.infer({})
        with pytest.raises(InferenceError):
            model.infer({model.inputs[0].name: np.zeros((2, 5), np.float32)})
    finally:
        model.close()


def test_tflite_pool_serves_concurrent_calls(tflite_model: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = get_runtime("tflite").load(tflite_model, RuntimeOptions(inter_op_threads=2))
    name, out = model.inputs[0].name, model.outputs[0].name
    xs = [np.full((i % 3 + 1, 784), i / 10, np.float32) for i in range(12)]
    expected = [model.infer({name: x})[out] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model.infer({name: x})[out], xs))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_loading_garbage_is_a_model_load_error(runtime: str, tmp_path: Path) -> None:
    bad = tmp_path / f"bad.{runtime}"
    bad.write_bytes(b"\x08\x01garbage" * 50)
    with pytest.raises(ModelLoadError):
        _load(bad, runtime)
    with pytest.raises(ModelLoadError):
        _load(tmp_path / f"missing.{runtime}", runtime)


def test_packager_never_imports_tensorflow(both_dir: Path) -> None:
    """The agent uses this library; loading and running a TFLite variant must not pull in TF."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from model_packager import archive, build, cli, golden, loading, signing\n"
        "from model_packager.manifest import Manifest\n"
        "from model_packager.runtimes import RuntimeOptions\n"
        f"d = Path({str(both_dir)!r})\n"
        "m = Manifest.from_bytes((d / 'manifest.json').read_bytes())\n"
        "for v in m.variants:\n"
        "    model = loading.load_variant(d, m, v, RuntimeOptions())\n"
        "    golden.check(model, d / v.golden.path, v.rtol, v.atol)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "clean"
