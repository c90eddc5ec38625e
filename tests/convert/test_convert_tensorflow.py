"""Keras and SavedModel conversion with the real frameworks, gated by parity."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_packager.archive import open_package, verify_package
from model_packager.convert import ConversionError, ConvertSpec, convert
from model_packager.signing import TrustStore, load_private_key, load_public_key
from tests.convert.conftest import MOBILENET_TARGETS, ConvertedPackage


def test_mobilenet_v2_variants_pass_parity(
    mobilenet_package: ConvertedPackage, convert_keys: dict[str, Path]
) -> None:
    """Keras MobileNetV2 96x96 -> onnx + tflite fp32/fp16/int8, one signed package, all gated."""
    m = mobilenet_package.manifest
    trust = TrustStore.from_keys([load_public_key(convert_keys["public"])])
    verify_package(mobilenet_package.path, trust)

    assert [v.name for v in m.variants] == list(MOBILENET_TARGETS)
    assert [t.name for t in m.inputs] == ["input_layer"]
    assert m.inputs[0].shape == [-1, 96, 96, 3]
    assert [t.name for t in m.outputs] == ["predictions"]
    by_name = {v.name: v for v in m.variants}
    for v in m.variants:
        assert v.parity is not None and v.parity.reference == "keras"
        assert v.parity.samples == 64
        assert v.parity.top1_agreement is not None
    # The gates are relative to the reference outputs' scale (logits here), recorded per variant.
    for name, rel in (("onnx-fp32", 1e-4), ("tflite-fp32", 1e-4), ("tflite-fp16", 1e-2)):
        p = by_name[name].parity
        assert p is not None and p.output_scale is not None and p.output_scale > 0
        assert p.max_abs_error <= rel * p.output_scale, (name, p)
    assert by_name["tflite-int8"].parity.top1_agreement >= 0.98  # type: ignore[union-attr,operator]
    assert by_name["tflite-int8"].precision == "int8"
    assert m.provenance.extra["source_framework"] == "keras"
    assert m.provenance.extra["dropped_variants"] == {}
    # The report names every variant and its verdict; progress went to stderr.
    for name in MOBILENET_TARGETS:
        assert name in mobilenet_package.stdout
    assert "tflite-int8: converting" in mobilenet_package.stderr


def test_int8_is_smaller_than_fp32(mobilenet_package: ConvertedPackage) -> None:
    sizes = {v.name: v.artifact.size for v in mobilenet_package.manifest.variants}
    assert sizes["tflite-int8"] < sizes["tflite-fp16"] < sizes["tflite-fp32"]


def test_savedmodel_converts_with_its_signature_names(
    small_savedmodel: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    report = convert(
        ConvertSpec(
            source=small_savedmodel,
            name="dense",
            version="2",
            targets=["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8-dynamic"],
        ),
        tmp_path,
        load_private_key(convert_keys["private"]),
    )
    assert report.framework == "tensorflow"
    assert [v.status for v in report.variants] == ["kept"] * 4, report.table()
    assert report.package is not None
    m = open_package(report.package).manifest
    assert [t.name for t in m.inputs] == ["features"]
    assert [t.name for t in m.outputs] == ["probs"]
    fp32 = m.variant("onnx-fp32").parity
    assert fp32 is not None and fp32.reference == "tensorflow" and fp32.max_abs_error < 1e-5
    # TFLite renames tensors; the package maps its names to the artifact's own.
    assert m.variant("tflite-fp32").tensor_names


def test_corrupt_keras_file_names_the_step_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError) as info:
        convert(ConvertSpec(source=bad, name="x", version="1"), out)
    assert info.value.step == "load"
    assert "broken.keras" in str(info.value)
    assert list(out.iterdir()) == []


def test_wrong_input_spec_in_samples_is_refused(mobilenet_keras: Path, tmp_path: Path) -> None:
    import numpy as np

    samples = tmp_path / "wrong.npy"
    np.save(samples, np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ConversionError) as info:
        convert(
            ConvertSpec(source=mobilenet_keras, name="x", version="1", samples=samples),
            tmp_path,
        )
    assert info.value.step == "samples"
    assert "[-1, 96, 96, 3]" in str(info.value)
