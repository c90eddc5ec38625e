"""PyTorch -> ONNX, gated against the PyTorch model, when the optional ``pytorch`` extra is here.

Skipped (with the reason) only when torch is not installed: ``.ci/run`` installs the extra;
``scripts/setup`` does not, since PyPI's Linux torch wheel brings about 5 GB of CUDA libraries
(model_packager/README.md, "PyTorch").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip(
    "torch", reason="the optional pytorch extra (pip install .[pytorch]) is not installed"
)

from model_packager.archive import open_package  # noqa: E402
from model_packager.convert import ConversionError, ConvertSpec, convert  # noqa: E402


class SmallCnn(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return torch.softmax(self.fc(x), dim=1)


@pytest.fixture(scope="module")
def cnn() -> SmallCnn:
    torch.manual_seed(0)
    return SmallCnn().eval()


def test_exported_program_converts_with_parity(cnn: SmallCnn, tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        cnn, (torch.zeros(2, 1, 16, 16),), dynamic_shapes={"x": {0: batch}}
    )
    path = tmp_path / "cnn.pt2"
    torch.export.save(program, str(path))
    report = convert(
        ConvertSpec(source=path, name="cnn", version="1", targets=["onnx-fp32", "onnx-int8"]),
        tmp_path / "out",
    )
    assert report.framework == "pytorch"
    assert [v.status for v in report.variants] == ["kept", "kept"], report.table()
    m = open_package(report.package).manifest  # type: ignore[arg-type]
    assert [(t.name, t.shape) for t in m.inputs] == [("x", [-1, 1, 16, 16])]
    fp32 = m.variant("onnx-fp32").parity
    assert fp32 is not None and fp32.reference == "pytorch" and fp32.max_abs_error < 1e-4


def test_torchscript_needs_and_takes_input_shapes(cnn: SmallCnn, tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    with pytest.raises(ConversionError, match="--input-shape for \\['x'\\]"):
        convert(ConvertSpec(source=path, name="cnn", version="1"), tmp_path / "out")
    report = convert(
        ConvertSpec(
            source=path,
            name="cnn",
            version="2",
            targets=["onnx-fp32"],
            input_shapes={"x": (-1, 1, 16, 16)},
        ),
        tmp_path / "out",
    )
    assert [v.status for v in report.variants] == ["kept"], report.table()


def test_registry_imports_a_pt2_program(cnn: SmallCnn, tmp_path: Path) -> None:
    """``POST /models/import`` with a .pt2 file: converted by the registry's worker, gated
    against torch, signed."""
    from fastapi.testclient import TestClient

    from control_plane.app import create_app
    from control_plane.core.settings import DEFAULT_SECRET, Settings

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        cnn, (torch.zeros(2, 1, 16, 16),), dynamic_shapes={"x": {0: batch}}
    )
    path = tmp_path / "cnn.pt2"
    torch.export.save(program, str(path))
    settings = Settings(data_dir=tmp_path / "cp", dev_mode=True, embedded_broker_port=0)
    auth = {"Authorization": f"Bearer {DEFAULT_SECRET}"}
    with TestClient(create_app(settings), headers=auth) as api:
        with open(path, "rb") as f:
            r = api.post(
                "/api/v1/models/import", files={"file": ("cnn.pt2", f)}, data={"name": "cnn"}
            )
        assert r.status_code == 202, r.text
        assert r.json()["source_kind"] == "pytorch"
        deadline = time.monotonic() + 300
        while (mv := api.get("/api/v1/models/cnn/versions/1").json())["state"] == "converting":
            assert time.monotonic() < deadline, "still converting"
            time.sleep(0.3)
        assert mv["state"] == "ready", mv["error"]
        kept = {v["name"] for v in mv["conversion_report"]["variants"] if v["status"] == "kept"}
        assert kept == {"onnx-fp32", "onnx-int8"}
