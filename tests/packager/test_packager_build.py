"""build -> inspect -> verify -> extract -> load -> golden replay on real ONNX and TFLite models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from model_packager import golden
from model_packager.archive import (
    open_package,
    sha256_file,
    verify_package,
)
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.errors import (
    BuildError,
    GoldenMismatch,
    InvalidPackage,
    ModelLoadError,
    PackageError,
)
from model_packager.loading import load_variant
from model_packager.manifest import Manifest
from model_packager.runtimes import RuntimeOptions, get_runtime

FEATURES, CLASSES = 784, 10
LABELS = [f"digit-{i}" for i in range(CLASSES)]


def _own_names(model_path: Path, runtime: str) -> tuple[str, str]:
    m = get_runtime(runtime).load(model_path, RuntimeOptions())
    try:
        return m.inputs[0].name, m.outputs[0].name
    finally:
        m.close()


def _signature(m: Manifest) -> tuple[list, list]:
    return (
        [(t.name, t.datatype, t.shape) for t in m.inputs],
        [(t.name, t.datatype, t.shape) for t in m.outputs],
    )


# ----------------------------------------------------------------------------- round trips


def test_onnx_round_trip(onnx_pkg: Path, onnx_model: Path, signer) -> None:
    reader = open_package(onnx_pkg)
    m = reader.manifest
    assert (m.name, m.version, m.description) == ("mnist-mlp", "1.0.0", "onnx only")
    assert _signature(m) == (
        [("input", "FP32", [-1, FEATURES])],
        [("logits", "FP32", [-1, CLASSES])],
    )
    assert m.labels == LABELS
    [v] = m.variants
    assert (v.name, v.runtime, v.precision) == ("onnx-fp32", "onnx", "fp32")
    assert v.tensor_names == {}
    assert v.artifact.sha256 == sha256_file(onnx_model)
    assert v.artifact.size == onnx_model.stat().st_size
    assert m.provenance.source == onnx_model.name
    assert m.provenance.source_sha256 == sha256_file(onnx_model)
    assert reader.signature_bytes is not None

    verified, kid = verify_package(onnx_pkg, signer.trust)
    assert kid == signer.key_id
    assert verified.manifest == m


@pytest.mark.parametrize("fixture", ["onnx_pkg", "tflite_pkg", "both_pkg", "unsigned_pkg"])
def test_file_name_is_sha256_of_the_file(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    assert path.name == f"{sha256_file(path)}.edgepkg"
    assert open_package(path).digest == sha256_file(path)
    # No temporary files are left beside the package.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_tflite_round_trip(tflite_pkg: Path, tflite_model: Path, signer) -> None:
    m = verify_package(tflite_pkg, signer.trust)[0].manifest
    own_in, own_out = _own_names(tflite_model, "tflite")
    # A single-variant package uses the artifact's own names: nothing to map.
    assert _signature(m) == ([(own_in, "FP32", [-1, FEATURES])], [(own_out, "FP32", [-1, CLASSES])])
    [v] = m.variants
    assert (v.name, v.runtime) == ("tflite-fp32", "tflite")
    assert v.tensor_names == {}
    assert v.artifact.sha256 == sha256_file(tflite_model)


def test_two_variants_map_tflite_names_to_the_onnx_names(
    both_pkg: Path, tflite_model: Path, signer
) -> None:
    m = verify_package(both_pkg, signer.trust)[0].manifest
    assert _signature(m) == (
        [("input", "FP32", [-1, FEATURES])],
        [("logits", "FP32", [-1, CLASSES])],
    )
    assert [v.name for v in m.variants] == ["onnx-fp32", "tflite-fp32"]
    onnx_v, tfl_v = m.variants
    own_in, own_out = _own_names(tflite_model, "tflite")
    assert own_in != "input" and own_out != "logits"  # the premise of the test
    assert onnx_v.tensor_names == {}
    assert tfl_v.tensor_names == {"input": own_in, "logits": own_out}
    assert {f.path for f in m.files()} == {
        "artifacts/onnx-fp32.onnx",
        "artifacts/tflite-fp32.tflite",
        "golden/onnx-fp32.npz",
        "golden/tflite-fp32.npz",
    }


def test_onnx_variants_with_different_names_are_mapped_by_position(
    onnx_model: Path, onnx_model_renamed: Path, tmp_path: Path
) -> None:
    spec = BuildSpec(
        name="x",
        version="1",
        artifacts=[ArtifactInput(onnx_model), ArtifactInput(onnx_model_renamed, name="renamed")],
    )
    m = open_package(build_package(spec, tmp_path)).manifest
    assert m.variant("renamed").tensor_names == {"input": "x", "logits": "y"}


def test_extracted_package_layout(both_dir: Path, both_pkg: Path) -> None:
    reader = open_package(both_pkg)
    assert (both_dir / "manifest.json").read_bytes() == reader.manifest_bytes
    assert (both_dir / "signature.json").read_bytes() == reader.signature_bytes
    for ref in reader.manifest.files():
        assert sha256_file(both_dir / ref.path) == ref.sha256
    assert sorted(str(p.relative_to(both_dir)) for p in both_dir.rglob("*") if p.is_file()) == [
        "artifacts/onnx-fp32.onnx",
        "artifacts/tflite-fp32.tflite",
        "golden/onnx-fp32.npz",
        "golden/tflite-fp32.npz",
        "manifest.json",
        "signature.json",
    ]


# ---------------------------------------------------------------------- loading and golden


@pytest.mark.parametrize("variant", ["onnx-fp32", "tflite-fp32"])
def test_load_variant_presents_package_names(both_dir: Path, variant: str) -> None:
    m = open_package_manifest(both_dir)
    model = load_variant(both_dir, m, m.variant(variant), RuntimeOptions())
    try:
        assert [s.name for s in model.inputs] == ["input"]
        assert [s.name for s in model.outputs] == ["logits"]
        x = np.random.default_rng(5).standard_normal((4, FEATURES)).astype(np.float32)
        out = model.infer({"input": x})
        assert list(out) == ["logits"]
        assert out["logits"].shape == (4, CLASSES)
        assert list(model.infer({"input": x}, ["logits"])) == ["logits"]
    finally:
        model.close()


def test_variants_agree_with_each_other(both_dir: Path) -> None:
    """The TFLite twin carries the ONNX weights, so both variants compute the same function."""
    m = open_package_manifest(both_dir)
    x = np.random.default_rng(7).standard_normal((5, FEATURES)).astype(np.float32)
    outs = []
    for v in m.variants:
        model = load_variant(both_dir, m, v, RuntimeOptions())
        outs.append(model.infer({"input": x})["logits"])
        model.close()
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    # ...and neither is a constant function.
    assert np.ptp(outs[0]) > 0.1


@pytest.mark.parametrize("variant", ["onnx-fp32", "tflite-fp32"])
def test_golden_vectors_replay(both_dir: Path, variant: str) -> None:
    m = open_package_manifest(both_dir)
    v = m.variant(variant)
    inputs, outputs = golden.decode(both_dir / v.golden.path)
    assert list(inputs) == ["input"] and list(outputs) == ["logits"]
    assert inputs["input"].shape == (3, FEATURES)  # golden_count=3
    assert outputs["logits"].shape == (3, CLASSES)
    model = load_variant(both_dir, m, v, RuntimeOptions())
    try:
        golden.check(model, both_dir / v.golden.path, v.rtol, v.atol)
    finally:
        model.close()


def test_golden_inputs_are_shared_by_variants(both_dir: Path) -> None:
    m = open_package_manifest(both_dir)
    a, b = (golden.decode(both_dir / v.golden.path)[0]["input"] for v in m.variants)
    np.testing.assert_array_equal(a, b)


def _rewrite_golden(src: Path, dst: Path, **arrays: np.ndarray) -> Path:
    with np.load(src) as data:
        merged = {k: data[k] for k in data.files}
    merged.update(arrays)
    for k in [k for k, v in merged.items() if v is None]:
        del merged[k]
    buf = io.BytesIO()
    np.savez(buf, **merged)
    dst.write_bytes(buf.getvalue())
    return dst


@pytest.mark.parametrize("variant", ["onnx-fp32", "tflite-fp32"])
def test_golden_check_fails_on_altered_outputs(
    both_dir: Path, tmp_path: Path, variant: str
) -> None:
    m = open_package_manifest(both_dir)
    v = m.variant(variant)
    src = both_dir / v.golden.path
    with np.load(src) as data:
        expected = data["out:logits"]
    altered = expected.copy()
    altered[1, 3] += 0.5
    model = load_variant(both_dir, m, v, RuntimeOptions())
    try:
        bad = _rewrite_golden(src, tmp_path / "bad.npz", **{"out:logits": altered})
        with pytest.raises(GoldenMismatch, match=r"'logits'.*max abs error 0\.5"):
            golden.check(model, bad, v.rtol, v.atol)

        wrong_shape = _rewrite_golden(src, tmp_path / "shape.npz", **{"out:logits": expected[:2]})
        with pytest.raises(GoldenMismatch, match="shape"):
            golden.check(model, wrong_shape, v.rtol, v.atol)

        extra = _rewrite_golden(src, tmp_path / "extra.npz", **{"out:probs": expected})
        with pytest.raises(GoldenMismatch, match="no output 'probs'"):
            golden.check(model, extra, v.rtol, v.atol)

        # A tiny change within tolerance still passes: the check is not bytewise.
        close = _rewrite_golden(src, tmp_path / "close.npz", **{"out:logits": expected + 1e-7})
        golden.check(model, close, v.rtol, v.atol)
    finally:
        model.close()


def test_golden_decode_rejects_garbage(tmp_path: Path, both_dir: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(InvalidPackage, match="unreadable"):
        golden.decode(junk)
    only_inputs = tmp_path / "inputs.npz"
    np.savez(only_inputs, **{"in:input": np.zeros((1, FEATURES), np.float32)})
    with pytest.raises(InvalidPackage, match="no inputs or outputs"):
        golden.decode(only_inputs)
    # A zip whose member is corrupted (CRC error) is also a package problem, not a crash.
    good = (both_dir / "golden/onnx-fp32.npz").read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 3] ^= 0xFF
    broken = tmp_path / "broken.npz"
    broken.write_bytes(bytes(corrupt))
    with pytest.raises(InvalidPackage):
        golden.decode(broken)


def test_load_variant_rejects_an_artifact_that_disagrees_with_the_manifest(both_dir: Path) -> None:
    m = open_package_manifest(both_dir)
    data = m.to_dict()
    data["inputs"][0]["datatype"] = "FP64"
    with pytest.raises(ModelLoadError, match="input 'input' is FP32"):
        load_variant(both_dir, Manifest.from_dict(data), m.variants[0], RuntimeOptions())
    data = m.to_dict()
    data["outputs"][0]["shape"] = [-1, 11]
    with pytest.raises(ModelLoadError, match="output"):
        load_variant(both_dir, Manifest.from_dict(data), m.variants[0], RuntimeOptions())
    data = m.to_dict()
    data["variants"][1]["tensor_names"] = {"input": "nope", "logits": "nope2"}
    bad = Manifest.from_dict(data)
    with pytest.raises(ModelLoadError, match="no input 'nope'"):
        load_variant(both_dir, bad, bad.variants[1], RuntimeOptions())


def test_load_variant_on_a_corrupt_artifact(tmp_path: Path, both_dir: Path) -> None:
    m = open_package_manifest(both_dir)
    for v in m.variants:
        target = tmp_path / v.artifact.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x00garbage" * 100)
    for v in m.variants:
        with pytest.raises(ModelLoadError):
            load_variant(tmp_path, m, v, RuntimeOptions())


def open_package_manifest(package_dir: Path) -> Manifest:
    return Manifest.from_bytes((package_dir / "manifest.json").read_bytes())


# ------------------------------------------------------------------------------ build errors


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_build_rejects_bad_inputs(
    tmp_path: Path, onnx_model: Path, onnx_model_3_classes: Path
) -> None:
    out = tmp_path / "out"
    cases: list[tuple[BuildSpec, str]] = [
        (BuildSpec("m", "1", []), "at least one"),
        (
            BuildSpec("m", "1", [ArtifactInput(onnx_model), ArtifactInput(onnx_model)]),
            "variant names must differ",
        ),
        (BuildSpec("m", "1", [ArtifactInput(tmp_path / "missing.onnx")]), "no such file"),
        (BuildSpec("m", "1", [ArtifactInput(onnx_model.with_suffix(".pb"))]), "unknown model type"),
        (BuildSpec("m", "1", [ArtifactInput(onnx_model)], labels=["a", "b"]), "2 labels"),
        (
            BuildSpec(
                "m", "1", [ArtifactInput(onnx_model), ArtifactInput(onnx_model_3_classes, "three")]
            ),
            "three output",
        ),
        (BuildSpec("my model", "1", [ArtifactInput(onnx_model)]), "my model"),
        (BuildSpec("m", "1/../2", [ArtifactInput(onnx_model)]), "1/../2"),
        (BuildSpec("m", "1", [ArtifactInput(onnx_model, name="a b")]), "a b"),
        (BuildSpec("m", "1", [ArtifactInput(onnx_model)], golden_count=0), "golden"),
    ]
    for spec, message in cases:
        with pytest.raises(BuildError, match=message):
            build_package(spec, out)
        assert _nothing_written(out), spec


def test_build_rejects_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"definitely not protobuf")
    with pytest.raises(BuildError, match=r"fake\.onnx"):
        build_package(BuildSpec("m", "1", [ArtifactInput(fake)]), tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


def test_build_reports_progress_and_keeps_metadata(onnx_model: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    spec = BuildSpec(
        "m",
        "3",
        [ArtifactInput(onnx_model, name="fast", precision="fp32", rtol=0.01, atol=0.001)],
        preprocessing={"scale": 255},
        converter="none",
        provenance_extra={"run": 7},
    )
    m = open_package(build_package(spec, tmp_path, progress=seen.append)).manifest
    assert any("loading mlp.onnx" in s for s in seen)
    assert seen[-1].endswith("(unsigned)")
    v = m.variant("fast")
    assert (v.rtol, v.atol) == (0.01, 0.001)
    assert m.preprocessing == {"scale": 255}
    assert (m.provenance.converter, m.provenance.extra) == ("none", {"run": 7})
    assert isinstance(BuildError("x"), PackageError)
