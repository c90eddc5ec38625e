"""ModelArts model directory -> package -> agent, and the Python-handler gate on the device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from model_packager.archive import open_package
from model_packager.convert import ConversionError, ConvertSpec, convert, detect_kind
from model_packager.processing import python_handler
from model_packager.signing import load_private_key
from tests.agent.agent_process import AgentProcess

HANDLER = """\
import numpy as np
from model_service.tfserving_model_service import TfServingBaseService


class DenseService(TfServingBaseService):
    def _preprocess(self, data):
        rows = [np.frombuffer(f.read(), dtype=np.float32) for f in data["features"].values()]
        return {"features": np.stack(rows)}

    def _postprocess(self, data):
        return {"predicted": int(np.argmax(data["probs"][0]))}
"""
CONFIG = {
    "model_type": "TensorFlow",
    "model_algorithm": "image_classification",
    "apis": [{"protocol": "https", "url": "/", "method": "post"}],
    "dependencies": [{"installer": "pip", "packages": [{"package_name": "numpy"}]}],
}


@pytest.fixture(scope="module")
def modelarts_dir(small_savedmodel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("modelarts") / "model"
    shutil.copytree(small_savedmodel, d)
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "customize_service.py").write_text(HANDLER)
    return d


@pytest.fixture(scope="module")
def modelarts_package(
    modelarts_dir: Path, tmp_path_factory: pytest.TempPathFactory, convert_keys: dict[str, Path]
) -> Path:
    report = convert(
        ConvertSpec(
            source=modelarts_dir, name="dense-ma", version="1", targets=["onnx-fp32", "tflite-fp32"]
        ),
        tmp_path_factory.mktemp("ma-pkg"),
        load_private_key(convert_keys["private"]),
    )
    assert report.package is not None
    return report.package


def test_modelarts_directory_round_trip(modelarts_dir: Path, modelarts_package: Path) -> None:
    assert detect_kind(modelarts_dir) == "modelarts"
    m = open_package(modelarts_package).manifest
    handler = python_handler(m.preprocessing)
    assert handler is not None
    assert handler.module == "customize_service.py"
    assert handler.source == HANDLER
    assert handler.config == CONFIG
    assert [v.name for v in m.variants] == ["onnx-fp32", "tflite-fp32"]
    assert [t.name for t in m.inputs] == ["features"]
    assert m.variant("onnx-fp32").parity is not None


def test_unsupported_model_type_is_refused(modelarts_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(modelarts_dir, d)
    (d / "config.json").write_text(json.dumps({**CONFIG, "model_type": "PyTorch"}))
    with pytest.raises(ConversionError, match="model_type 'PyTorch' is not supported"):
        convert(ConvertSpec(source=d, name="x", version="1"), tmp_path)


def test_agent_refuses_python_handlers_by_default(
    modelarts_package: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    agent = AgentProcess(tmp_path / "agent", [convert_keys["public"]]).start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            agent.install(modelarts_package)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details() or ""
        assert "install failed at load" in details
        assert "does not run Python handlers" in details and "allow_python_handlers" in details
        assert not agent.status().models
    finally:
        agent.stop()


def test_agent_installs_python_handlers_when_allowed(
    modelarts_package: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    agent = AgentProcess(
        tmp_path / "agent", [convert_keys["public"]], allow_python_handlers=True
    ).start()
    try:
        r = agent.install(modelarts_package)
        assert r.result.outcome == "COMMITTED", r
    finally:
        agent.stop()
