"""Manifest validation: anything a reader cannot trust is InvalidPackage with a readable message."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_packager.errors import InvalidPackage
from model_packager.manifest import FORMAT_VERSION, Manifest
from model_packager.tensors import TensorSpec, datatype_to_dtype, dtype_to_datatype

SHA = "ab" * 32


def _doc() -> dict[str, Any]:
    def ref(path: str) -> dict[str, Any]:
        return {"path": path, "sha256": SHA, "size": 10}

    return {
        "format_version": FORMAT_VERSION,
        "name": "mnist",
        "version": "1.0.0",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "variants": [
            {
                "name": "onnx-fp32",
                "runtime": "onnx",
                "artifact": ref("artifacts/onnx-fp32.onnx"),
                "golden": ref("golden/onnx-fp32.npz"),
            },
            {
                "name": "tflite-fp32",
                "runtime": "tflite",
                "artifact": ref("artifacts/tflite-fp32.tflite"),
                "golden": ref("golden/tflite-fp32.npz"),
                "tensor_names": {"input": "serving_default_x:0"},
            },
        ],
        "provenance": {"tool": "tests", "created_at": "2026-01-01T00:00:00+00:00"},
    }


def _load(doc: object) -> Manifest:
    return Manifest.from_bytes(json.dumps(doc).encode())


def _edit(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    fn(doc)
    return doc


def test_valid_manifest_round_trips_canonically() -> None:
    m = _load(_doc())
    raw = m.to_bytes()
    assert Manifest.from_bytes(raw) == m
    assert Manifest.from_bytes(raw).to_bytes() == raw
    # Canonical: key order in the input does not matter.
    shuffled = json.dumps(dict(reversed(list(_doc().items())))).encode()
    assert Manifest.from_bytes(shuffled).to_bytes() == raw
    assert [f.path for f in m.files()] == [
        "artifacts/onnx-fp32.onnx",
        "golden/onnx-fp32.npz",
        "artifacts/tflite-fp32.tflite",
        "golden/tflite-fp32.npz",
    ]
    assert m.variant("tflite-fp32").tensor_names == {"input": "serving_default_x:0"}
    with pytest.raises(KeyError):
        m.variant("nope")
    assert m.input_specs() == [TensorSpec("input", "FP32", (-1, 784))]


#: Manifests written by the pydantic models the package format had before
#: ``model_packager.records`` (floats given as ints, nulls, a capture block, non-ASCII text).
#: Signatures cover these exact bytes: reading one and writing it again gives them back.
BEFORE = sorted((Path(__file__).parent / "data").glob("manifest-before-records*.json"))


@pytest.mark.parametrize("path", BEFORE, ids=lambda p: p.name)
def test_manifests_written_before_records_read_and_write_the_same_bytes(path: Path) -> None:
    raw = path.read_bytes()
    m = Manifest.from_bytes(raw)
    assert m.to_bytes() == raw
    assert m.variants[0].rtol == 0.0 and isinstance(m.variants[0].rtol, float)
    assert m.variants[0].artifact.size == 1234


def test_both_manifests_written_before_records_are_here() -> None:
    assert [p.name for p in BEFORE] == [
        "manifest-before-records-capture.json",
        "manifest-before-records.json",
    ]


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def fn(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return fn


BAD: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "newer format": (_set("format_version", 2), "format version 2 is not supported"),
    "older format": (_set("format_version", 0), "format version 0 is not supported"),
    "format as text": (_set("format_version", "one"), "format version 'one' is not supported"),
    "bool format": (_set("format_version", True), "format version True is not supported"),
    "newer format with new fields": (
        lambda d: d.update(format_version=2, signatures_v2=[1]),
        "format version 2 is not supported",
    ),
    "unknown datatype": (_set("inputs.0.datatype", "FLOAT"), "inputs.0.datatype: unknown datatype"),
    "lowercase datatype": (_set("outputs.0.datatype", "fp32"), "unknown datatype 'fp32'"),
    "zero dim": (_set("inputs.0.shape", [0, 784]), "neither positive nor -1"),
    "negative dim": (_set("inputs.0.shape", [-2, 784]), "neither positive nor -1"),
    "empty tensor name": (_set("inputs.0.name", ""), "inputs.0.name"),
    "name with space": (_set("name", "my model"), "'my model' must be"),
    "name with slash": (_set("name", "a/b"), "'a/b' must be"),
    "empty name": (_set("name", ""), "name"),
    "leading dot name": (_set("name", ".hidden"), "'.hidden' must be"),
    "name too long": (_set("name", "a" * 129), "must be 1-128"),
    "version with dotdot path": (_set("version", "../1"), "'../1' must be"),
    "bad variant name": (_set("variants.0.name", "onnx fp32"), "invalid variant name"),
    "unknown runtime": (_set("variants.0.runtime", "tensorrt"), "variants.0.runtime"),
    "absolute path": (_set("variants.0.artifact.path", "/etc/passwd"), "unsafe path '/etc/passwd'"),
    "dotdot path": (_set("variants.0.artifact.path", "../x.onnx"), "unsafe path '../x.onnx'"),
    "inner dotdot": (_set("variants.0.golden.path", "golden/../../x"), "unsafe path"),
    "dot segment": (_set("variants.0.golden.path", "./x.npz"), "unsafe path"),
    "empty segment": (_set("variants.0.golden.path", "golden//x.npz"), "unsafe path"),
    "trailing slash": (_set("variants.0.golden.path", "golden/"), "unsafe path"),
    "backslash": (_set("variants.0.golden.path", "golden\\x.npz"), "unsafe path"),
    "empty path": (_set("variants.0.golden.path", ""), "unsafe path"),
    "uppercase sha": (_set("variants.0.artifact.sha256", "AB" * 32), "64 lowercase hex"),
    "short sha": (_set("variants.0.artifact.sha256", "ab"), "64 lowercase hex"),
    "negative size": (_set("variants.0.artifact.size", -1), "variants.0.artifact.size"),
    "duplicate variants": (
        _set("variants.1.name", "onnx-fp32"),
        "variant names must be unique",
    ),
    "two refs, one file": (
        _set("variants.1.artifact.path", "artifacts/onnx-fp32.onnx"),
        "same file",
    ),
    "artifact named like the manifest": (
        _set("variants.0.artifact.path", "manifest.json"),
        "named like the manifest",
    ),
    "file that is also a folder": (
        _set("variants.1.golden.path", "artifacts/onnx-fp32.onnx/g.npz"),
        "'artifacts/onnx-fp32.onnx' is both a file and the folder",
    ),
    "file under the manifest": (
        _set("variants.1.golden.path", "manifest.json/g.npz"),
        "both a file and the folder",
    ),
    "no variants": (_set("variants", []), "variants"),
    "unknown field": (lambda d: d.update(surprise=1), "surprise: Extra inputs are not permitted"),
    "missing provenance": (lambda d: d.pop("provenance"), "provenance: Field required"),
    "negative tolerance": (_set("variants.0.rtol", -0.1), "variants.0.rtol"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_manifest(case: str) -> None:
    edit, message = BAD[case]
    with pytest.raises(InvalidPackage) as info:
        _load(_edit(edit))
    text = str(info.value)
    assert text.startswith("manifest is invalid: ")
    assert message in text
    assert "\n" not in text
    assert ": :" not in text and "Value error," not in text


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_manifest_not_json(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidPackage, match=message):
        Manifest.from_bytes(raw)


def test_many_problems_are_counted() -> None:
    def many(d: dict[str, Any]) -> None:
        d["inputs"][0]["datatype"] = "X"
        d["outputs"][0]["datatype"] = "Y"

    with pytest.raises(InvalidPackage, match=r"\(and 1 more\)"):
        _load(_edit(many))


def test_datatype_mapping() -> None:
    import numpy as np

    assert datatype_to_dtype("FP32") == np.float32
    assert dtype_to_datatype(np.dtype(">f4")) == "FP32"
    assert dtype_to_datatype(np.str_) == "BYTES"
    with pytest.raises(KeyError, match="unknown datatype"):
        datatype_to_dtype("FLOAT")
    with pytest.raises(KeyError):
        dtype_to_datatype(np.complex64)


def test_tensor_spec_compatibility() -> None:
    a = TensorSpec("a", "FP32", (-1, 784))
    assert a.compatible(TensorSpec("b", "FP32", (1, 784)))
    assert a.compatible(TensorSpec("b", "FP32", (-1, -1)))
    assert not a.compatible(TensorSpec("b", "FP32", (-1, 785)))
    assert not a.compatible(TensorSpec("b", "FP16", (-1, 784)))
    assert not a.compatible(TensorSpec("b", "FP32", (-1, 784, 1)))
    assert a.accepts((5, 784)) and not a.accepts((5, 783)) and not a.accepts((784,))
    assert a.has_batch_dim and not TensorSpec("c", "FP32", (1, 3)).has_batch_dim
