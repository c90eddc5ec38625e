"""``SOURCE_KINDS`` is the one list of source kinds: what ``detect_kind`` guesses is in it, and a
kind outside it is refused with the list. No framework is imported: only files are laid out."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_packager.convert import SOURCE_KINDS, ConversionError, ConvertSpec, detect_kind
from model_packager.convert.pipeline import open_source


def _layouts(root: Path) -> dict[str, Path]:
    """One minimal on-disk layout per kind, as ``detect_kind`` recognises them."""
    keras = root / "model.keras"
    onnx = root / "model.onnx"
    mxnet = root / "net-symbol.json"
    pytorch = root / "model.pt2"
    savedmodel = root / "savedmodel"
    modelarts = root / "modelarts"
    for folder in (savedmodel, modelarts):
        folder.mkdir()
        (folder / "saved_model.pb").write_bytes(b"")
    (modelarts / "config.json").write_text("{}")
    (modelarts / "customize_service.py").write_text("")
    for f in (keras, onnx, mxnet, pytorch):
        f.write_bytes(b"")
    return {
        "keras": keras,
        "savedmodel": savedmodel,
        "onnx": onnx,
        "mxnet": mxnet,
        "pytorch": pytorch,
        "modelarts": modelarts,
    }


def test_every_guessable_kind_is_a_source_kind(tmp_path: Path) -> None:
    layouts = _layouts(tmp_path)
    assert set(layouts) == set(SOURCE_KINDS)  # a new kind needs a layout here too
    for kind, path in layouts.items():
        assert detect_kind(path) == kind


def test_unknown_kind_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    spec = ConvertSpec(source=tmp_path / "m.caffemodel", name="m", version="1", source_kind="caffe")
    with pytest.raises(ConversionError) as info:
        open_source(spec)
    assert info.value.step == "load"
    assert "unknown source kind 'caffe'" in str(info.value)
    assert ", ".join(SOURCE_KINDS) in str(info.value)
