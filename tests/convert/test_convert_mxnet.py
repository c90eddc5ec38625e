"""MXNet -> ONNX through .venv-mxnet, created by scripts/setup-mxnet as the suite runs.

Creating the venv took about 90 s on the reference machine (2 cores, loaded); later runs find it
ready in well under a second. Export of the Gluon network runs in that venv too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from model_packager.archive import open_package
from model_packager.convert import ConversionError, ConvertSpec, convert
from tests.convert.conftest import venv_from_setup_script


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    return venv_from_setup_script("setup-mxnet", ".venv-mxnet", timeout=900)


@pytest.fixture(scope="session")
def gluon_net(mxnet_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("gluon") / "net"
    subprocess.run(
        [str(mxnet_python), str(Path(__file__).with_name("mxnet_gluon_export.py")), str(prefix)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return Path(f"{prefix}-symbol.json")


def test_gluon_network_to_onnx_passes_parity(gluon_net: Path, tmp_path: Path) -> None:
    report = convert(
        ConvertSpec(
            source=gluon_net,
            name="gluon",
            version="1",
            targets=["onnx-fp32", "onnx-int8"],
            input_shapes={"data": (-1, 1, 16, 16)},
        ),
        tmp_path,
    )
    assert report.framework == "mxnet"
    assert [v.status for v in report.variants] == ["kept", "kept"], report.table()
    assert report.package is not None
    m = open_package(report.package).manifest
    assert [t.name for t in m.inputs] == ["data"]
    assert m.inputs[0].shape == [-1, 1, 16, 16]
    fp32 = m.variant("onnx-fp32").parity
    assert fp32 is not None and fp32.reference == "mxnet" and fp32.max_abs_error < 1e-4


def test_missing_input_shape_is_explained(gluon_net: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="--input-shape for \\['data'\\]"):
        convert(ConvertSpec(source=gluon_net, name="g", version="1"), tmp_path)


def test_missing_mxnet_venv_is_a_clear_error(tmp_path: Path) -> None:
    sym = tmp_path / "net-symbol.json"
    sym.write_text("{}")
    with pytest.raises(ConversionError) as info:
        convert(
            ConvertSpec(
                source=sym,
                name="g",
                version="1",
                mxnet_python=tmp_path / "no-venv" / "bin" / "python",
            ),
            tmp_path,
        )
    assert info.value.step == "load"
    assert "scripts/setup-mxnet" in str(info.value)
