"""Keras zoo architectures no other test names convert with every default target.

EfficientNetB0 (a ``Normalization`` layer, whose mean and variance tf2onnx used to turn into extra
graph inputs) and ConvNeXtTiny (exact GELU's ``Erfc`` and XLA-compiled grouped convolutions kept
as ``StatefulPartitionedCall``), both ``weights=None`` at 32x32 and trained a few steps
(``tests/convert/models.py``). The whole zoo is ``scripts/bench-conversion-zoo``. Conversion runs
in a subprocess: TensorFlow stays out of the test process.

Also here: a target that fails is dropped with its step, and the others still make the package.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_packager.archive import open_package
from model_packager.convert import ConversionError, ConvertSpec, convert
from model_packager.convert.base import Target
from model_packager.convert.onnx_source import OnnxSource
from model_packager.convert.pipeline import ParityGateFailed
from tests.conftest import REPO_ROOT
from tests.convert.conftest import MOBILENET_TARGETS, _cached

ZOO = ("EfficientNetB0", "ConvNeXtTiny")


def _zoo_inputs(name: str) -> tuple[Path, Path]:
    model, samples = _cached(f"zoo-{name}-32.keras"), _cached(f"zoo-{name}-32.npy")
    if not (model.exists() and samples.exists()):
        code = (
            "import sys, numpy as np; from pathlib import Path\n"
            f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
            "from tests.convert import models\n"
            f"p, s = models.zoo_model({name!r}, Path({str(model)!r} + '.partial.keras'))\n"
            f"np.save({str(samples)!r}, s); p.rename({str(model)!r})\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-4000:]
    return model, samples


@pytest.mark.parametrize("name", ZOO)
def test_zoo_architecture_converts_every_default_target(name: str, tmp_path: Path) -> None:
    model, samples = _zoo_inputs(name)
    cmd = [sys.executable, "-m", "model_packager.cli", "convert", str(model)]
    cmd += ["--name", name.lower(), "--version", "1", "--samples", str(samples)]
    cmd += ["--out-dir", str(tmp_path)]
    for t in MOBILENET_TARGETS:  # the default targets
        cmd += ["--target", t]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    m = open_package(Path(done.stdout.strip().splitlines()[-1])).manifest
    # One input, as the Keras model has (the Normalization state is folded into constants).
    assert [(t.name, t.shape) for t in m.inputs] == [("input_layer", [-1, 32, 32, 3])]
    dropped = m.provenance.extra["dropped_variants"]
    # Every target converted, loaded and ran; a gate verdict on a barely trained network is a
    # property of the network, but no target may have failed on the way there.
    assert not [r for r in dropped.values() if r.startswith("failed at")], dropped
    kept = {v.name: v for v in m.variants}
    assert {"onnx-fp32", "tflite-fp32"} <= set(kept), done.stdout
    for v in kept.values():
        assert v.parity is not None and v.parity.samples == 64
    assert set(kept) | set(dropped) == set(MOBILENET_TARGETS)


class _FailingInt8(OnnxSource):
    """A source whose int8 conversion fails, standing in for a converter that cannot do one op."""

    def convert(
        self, target: Target, out: Path, calibration: dict[str, np.ndarray] | None, work: Path
    ) -> Path:
        if target.precision.startswith("int8"):
            raise ConversionError(f"{target.name}: quantize", "operator Foo is not supported")
        return super().convert(target, out, calibration, work)


def test_a_failing_target_is_dropped_with_its_step(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_packager.convert import pipeline

    monkeypatch.setitem(
        pipeline._SOURCES, "onnx", (".onnx file", lambda spec: _FailingInt8(spec.source))
    )
    spec = ConvertSpec(
        source=models_dir / "mlp.onnx", name="mlp", version="1", targets=["onnx-fp32", "onnx-int8"]
    )
    report = convert(spec, tmp_path)
    assert [(v.name, v.status) for v in report.variants] == [
        ("onnx-fp32", "kept"),
        ("onnx-int8", "dropped"),
    ]
    failed = report.variants[1]
    assert failed.parity is None and failed.step == "onnx-int8: quantize"
    assert "operator Foo" in failed.reason
    assert report.package is not None
    m = open_package(report.package).manifest
    assert [v.name for v in m.variants] == ["onnx-fp32"]
    assert m.provenance.extra["dropped_variants"]["onnx-int8"].startswith("failed at onnx-int8")

    # Asked to fail, the first failing target stops the build with its own step.
    with pytest.raises(ConversionError) as err:
        convert(pipeline.ConvertSpec(**{**spec.__dict__, "on_parity_fail": "fail"}), tmp_path)
    assert err.value.step == "onnx-int8: quantize"
    assert not isinstance(err.value, ParityGateFailed)
