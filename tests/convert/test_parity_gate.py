"""The parity gate: figures, thresholds, drop versus fail, and no package on failure.

These use the small generated ONNX MLP (tests/.models), so they need no TensorFlow and run fast.
A "deliberately broken variant" is produced by swapping the quantiser for one that writes a model
with other weights (mlp_v2.onnx): it loads and runs, it just computes something else.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_packager.archive import open_package
from model_packager.convert import (
    ConversionError,
    ConvertSpec,
    ParityGateFailed,
    convert,
    onnx_source,
)
from model_packager.parity import compare, tolerance_for
from tests.conftest import REPO_ROOT


def test_compare_figures_and_thresholds() -> None:
    ref = {"p": np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], np.float32)}
    close = {"p": ref["p"] + 1e-6}
    r = compare(ref, close, reference_name="keras", precision="fp32")
    assert r.passed and r.top1_agreement == 1.0 and r.samples == 3
    assert r.max_abs_error == pytest.approx(1e-6, rel=0.1)

    far = {"p": ref["p"] + 0.005}
    assert not compare(ref, far, reference_name="keras", precision="fp32").passed
    assert compare(ref, far, reference_name="keras", precision="fp16").passed

    flipped = {"p": ref["p"][:, ::-1].copy()}
    r = compare(ref, flipped, reference_name="keras", precision="int8")
    assert not r.passed and r.top1_agreement == 0.0
    assert "top-1 agreement 0.000 < 0.98" in r.reason


def test_int8_regression_model_falls_back_to_error_bound() -> None:
    tol = tolerance_for("int8-dynamic", classifier=False)
    assert tol.min_top1 is None and tol.max_abs_rel == 0.1


def _broken_quantize(mlp_v2: Path):  # type: ignore[no-untyped-def]
    def quantize(src: Path, out: Path, *args: object, **kw: object) -> Path:
        shutil.copyfile(mlp_v2, out)
        return out

    return quantize


def test_broken_variant_is_dropped(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_source, "quantize", _broken_quantize(models_dir / "mlp_v2.onnx"))
    report = convert(
        ConvertSpec(
            source=models_dir / "mlp.onnx",
            name="mlp",
            version="1",
            targets=["onnx-fp32", "onnx-int8"],
            on_parity_fail="drop",
        ),
        tmp_path,
    )
    status = {v.name: v.status for v in report.variants}
    assert status == {"onnx-fp32": "kept", "onnx-int8": "dropped"}
    assert "top-1 agreement" in report.dropped[0].parity.reason
    assert "dropped" in report.table()
    assert report.package is not None
    m = open_package(report.package).manifest
    assert [v.name for v in m.variants] == ["onnx-fp32"]
    assert m.provenance.extra["dropped_variants"].keys() == {"onnx-int8"}


def test_broken_variant_fails_the_build_when_asked(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_source, "quantize", _broken_quantize(models_dir / "mlp_v2.onnx"))
    with pytest.raises(ParityGateFailed) as info:
        convert(
            ConvertSpec(
                source=models_dir / "mlp.onnx",
                name="mlp",
                version="1",
                targets=["onnx-fp32", "onnx-int8"],
                on_parity_fail="fail",
            ),
            tmp_path,
        )
    assert info.value.step == "parity"
    assert "onnx-int8" in str(info.value) and "no package written" in str(info.value)
    assert [v.status for v in info.value.report.variants] == ["kept", "dropped"]
    assert list(tmp_path.iterdir()) == []


def test_onnx_source_int8_variants_pass(models_dir: Path, tmp_path: Path) -> None:
    report = convert(
        ConvertSpec(
            source=models_dir / "mlp.onnx",
            name="mlp",
            version="1",
            targets=["onnx-fp32", "onnx-int8"],
        ),
        tmp_path,
    )
    assert [v.status for v in report.variants] == ["kept"] * 2, report.table()
    fp32 = report.variants[0].parity
    assert fp32.max_abs_error == 0.0 and fp32.reference == "onnxruntime"


def test_onnx_to_tflite_without_its_environment_names_the_setup_script(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX -> TFLite runs in .venv-onnx2tf (tests/convert/test_convert_onnx_tflite.py); where
    that environment is missing the target fails at its step and says how to make it (the only
    target, so no package is written)."""
    monkeypatch.setenv("EDGE_ONNX2TF_PYTHON", str(tmp_path / "no-such-venv" / "bin" / "python"))
    with pytest.raises(ConversionError) as info:
        convert(
            ConvertSpec(
                source=models_dir / "mlp.onnx", name="m", version="1", targets=["tflite-fp32"]
            ),
            tmp_path,
        )
    assert "tflite-fp32: failed at tflite-fp32" in str(info.value)
    assert "scripts/setup-onnx2tf" in str(info.value)


def test_cli_failure_is_one_line_naming_the_step(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "model_packager.cli", "convert", str(bad), "--name", "m",
         "--version", "1", "--target", "onnx-fp32", "--out-dir", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: conversion failed at step 'load'"), done.stderr
    assert "corrupt.onnx" in last
    assert list(out.iterdir()) == []
