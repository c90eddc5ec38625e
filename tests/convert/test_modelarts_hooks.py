"""ModelArts `_preprocess` / `_postprocess` run by the agent, checked against the same code by hand.

The package comes from a real ModelArts folder (SavedModel + config.json + customize_service.py)
through ``convert``; the agent runs as a subprocess and the client is the public tritonclient.
The reference is the handler's own code, executed here with a stand-in base class, around
onnxruntime on the package's ONNX artifact. ``edge_agent.serving.python_handlers`` is also tested
in-process: it imports neither the agent's gRPC code nor its generated protobufs.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from edge_agent.errors import InferenceFailed, InvalidInput
from edge_agent.serving.python_handlers import HandlerLoadError, load_hooks
from model_packager.archive import open_package
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.convert import ConvertSpec, convert
from model_packager.processing import PythonHandler
from model_packager.signing import load_private_key
from model_packager.tensors import TensorSpec
from tests.agent.agent_process import AgentProcess

HANDLER = """\
import time

import numpy as np
from PIL import Image
from model_service.tfserving_model_service import TfServingBaseService

LABELS = ["cat", "dog", "fish", "bird"]
MEAN, STD = 0.5, 0.25


class ImageService(TfServingBaseService):
    def _preprocess(self, data):
        if "instances" in data:  # a JSON request
            time.sleep(float(data.get("sleep", 0)))
            return {"features": np.asarray(data["instances"], dtype=np.float64)}
        rows = []
        for name, f in data["images"].items():
            img = Image.open(f)
            if min(img.size) < 4:
                raise ValueError(f"{name}: image is smaller than 4x4 pixels")
            img = img.convert("L").resize((4, 4), Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.float32) / 255.0
            rows.append(((x - MEAN) / STD).reshape(16))
        return {"features": np.stack(rows)}

    def _postprocess(self, data):
        scores = data["probs"]
        best = [row.index(max(row)) for row in scores]  # lists, as ModelArts passes them
        return {"predicted_label": [LABELS[i] for i in best], "scores": scores}
"""
CONFIG = {
    "model_type": "TensorFlow",
    "model_algorithm": "image_classification",
    "apis": [{"protocol": "https", "url": "/", "method": "post"}],
    "dependencies": [{"installer": "pip", "packages": [{"package_name": "Pillow"}]}],
}


@pytest.fixture(scope="module")
def hooks_package(
    small_savedmodel: Path, tmp_path_factory: pytest.TempPathFactory, convert_keys: dict[str, Path]
) -> Path:
    d = tmp_path_factory.mktemp("ma-hooks") / "model"
    shutil.copytree(small_savedmodel, d)
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "customize_service.py").write_text(HANDLER)
    report = convert(
        ConvertSpec(source=d, name="ma-hooks", version="1", targets=["onnx-fp32"]),
        tmp_path_factory.mktemp("ma-hooks-pkg"),
        load_private_key(convert_keys["private"]),
    )
    assert report.package is not None
    return report.package


@pytest.fixture(scope="module")
def onnx_model(hooks_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's own ONNX artifact, for the by-hand reference."""
    variant = open_package(hooks_package).manifest.variant("onnx-fp32")
    assert not variant.tensor_names  # the artifact uses the package's tensor names
    out = tmp_path_factory.mktemp("ma-hooks-onnx") / "model.onnx"
    with tarfile.open(hooks_package) as tar:
        member = tar.extractfile(variant.artifact.path)
        assert member is not None
        out.write_bytes(member.read())
    return out


@pytest.fixture(scope="module")
def agent(
    hooks_package: Path, tmp_path_factory: pytest.TempPathFactory, convert_keys: dict[str, Path]
) -> Iterator[AgentProcess]:
    proc = AgentProcess(
        tmp_path_factory.mktemp("ma-hooks-agent"),
        [convert_keys["public"]],
        allow_python_handlers=True,
    ).start()
    try:
        r = proc.install(hooks_package)
        assert r.result.outcome == "COMMITTED", r
        yield proc
    finally:
        proc.stop()


def by_hand(data: dict[str, Any], model: Path) -> Any:
    """The handler's code around onnxruntime, the way ModelArts would run it (no agent code)."""
    base = ModuleType("model_service.tfserving_model_service")

    class TfServingBaseService:
        def __init__(self, model_name: str, model_path: str) -> None:
            self.model_name, self.model_path = model_name, model_path

    base.TfServingBaseService = TfServingBaseService  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {"__name__": "by_hand"}
    saved = {k: sys.modules.get(k) for k in ("model_service", base.__name__)}
    sys.modules.update({"model_service": ModuleType("model_service"), base.__name__: base})
    try:
        exec(compile(HANDLER, "customize_service.py", "exec"), namespace)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    service = namespace["ImageService"]("ma-hooks", "")
    features = service._preprocess(data)["features"].astype(np.float32)
    probs = ort.InferenceSession(str(model)).run(["probs"], {"features": features})[0]
    return json.loads(json.dumps(service._postprocess({"probs": probs.tolist()})))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    rng = np.random.default_rng(11)
    gradient = np.tile(np.linspace(0, 255, 30, dtype=np.uint8), (20, 1))
    return [
        png(rng.integers(0, 255, (17, 13, 3), dtype=np.uint8)),
        png(gradient),  # grey, another size
    ]


def infer_files(client: Any, field: str, files: list[bytes]) -> Any:
    import tritonclient.grpc as tc

    inp = tc.InferInput(field, [len(files)], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=object))
    result = client.infer("ma-hooks", [inp])
    assert [o.name for o in result.get_response().outputs] == ["response"]
    return json.loads(result.as_numpy("response")[0])


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal JSON: same hook code, same artifact, same onnxruntime defaults -> same floats."""
    assert got == want


def test_png_request_runs_the_hooks_like_the_code_by_hand(
    agent: AgentProcess, onnx_model: Path, pictures: list[bytes]
) -> None:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(agent.address)
    for files in (pictures[:1], pictures):
        got = infer_files(client, "images", files)
        want = by_hand(
            {"images": {f"images_{i}": io.BytesIO(b) for i, b in enumerate(files)}}, onnx_model
        )
        assert len(got["scores"]) == len(files) and len(got["scores"][0]) == 4
        assert_same(got, want)
    client.close()


def test_json_request_runs_the_hooks(agent: AgentProcess, onnx_model: Path) -> None:
    import tritonclient.grpc as tc

    doc = {"instances": np.random.default_rng(5).normal(size=(3, 16)).round(4).tolist()}
    client = tc.InferenceServerClient(agent.address)
    inp = tc.InferInput("request", [1], "BYTES")
    inp.set_data_from_numpy(np.array([json.dumps(doc).encode()], dtype=object))
    got = json.loads(client.infer("ma-hooks", [inp]).as_numpy("response")[0])
    assert_same(got, by_hand(doc, onnx_model))
    client.close()


def test_hook_error_is_invalid_argument_and_the_agent_keeps_serving(
    agent: AgentProcess, onnx_model: Path, pictures: list[bytes]
) -> None:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(agent.address)
    tiny = png(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InferenceServerException) as info:
        infer_files(client, "images", [tiny])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "_preprocess raised ValueError: images_0: image is smaller than 4x4" in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        infer_files(client, "images", [b"not an image"])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "UnidentifiedImageError" in str(info.value)
    # The next request is served.
    want = by_hand({"images": {"images_0": io.BytesIO(pictures[0])}}, onnx_model)
    assert_same(infer_files(client, "images", pictures[:1]), want)
    client.close()


def test_tensor_requests_bypass_the_hooks(agent: AgentProcess, onnx_model: Path) -> None:
    import tritonclient.grpc as tc

    x = np.random.default_rng(2).normal(size=(2, 16)).astype(np.float32)
    client = tc.InferenceServerClient(agent.address)
    inp = tc.InferInput("features", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("ma-hooks", [inp]).as_numpy("probs")
    want = ort.InferenceSession(str(onnx_model)).run(["probs"], {"features": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    client.close()


def test_a_slow_hook_does_not_block_the_event_loop(agent: AgentProcess) -> None:
    """A hook sleeping 1.5 s in the thread pool; meanwhile tensor requests are answered at once."""
    import tritonclient.grpc as tc

    doc = {"sleep": 1.5, "instances": [[0.0] * 16]}
    slow_result: list[Any] = []

    def slow() -> None:
        c = tc.InferenceServerClient(agent.address)
        inp = tc.InferInput("request", [1], "BYTES")
        inp.set_data_from_numpy(np.array([json.dumps(doc).encode()], dtype=object))
        slow_result.append(json.loads(c.infer("ma-hooks", [inp]).as_numpy("response")[0]))
        c.close()

    thread = threading.Thread(target=slow)
    t0 = time.monotonic()
    thread.start()
    time.sleep(0.3)  # the slow request is inside _preprocess by now
    client = tc.InferenceServerClient(agent.address)
    inp = tc.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    client.infer("ma-hooks", [inp])
    fast_done = time.monotonic() - t0
    thread.join(10)
    slow_done = time.monotonic() - t0
    client.close()
    assert fast_done < 1.2, fast_done
    assert slow_done >= 1.5 and slow_result and len(slow_result[0]["scores"]) == 1


def _handler(source: str) -> PythonHandler:
    return PythonHandler(
        module="customize_service.py",
        source=source,
        sha256=hashlib.sha256(source.encode()).hexdigest(),
    )


def test_handler_that_does_not_import_refuses_the_install(
    agent: AgentProcess, onnx_model: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    pkg = build_package(
        BuildSpec(
            name="ma-broken",
            version="1",
            artifacts=[ArtifactInput(onnx_model)],
            preprocessing=_handler("import not_a_module_anywhere\n").to_dict(),
        ),
        tmp_path,
        load_private_key(convert_keys["private"]),
    )
    with pytest.raises(grpc.RpcError) as info:
        agent.install(pkg)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert "install failed at load: customize_service.py failed to import" in details
    assert "not_a_module_anywhere" in details


# In-process: the hook runner without an agent.
FEATURES = [TensorSpec("features", "FP32", (-1, 16))]


def test_stand_in_base_class_is_visible_only_while_importing(tmp_path: Path) -> None:
    source = (
        "from model_service.tfserving_model_service import TfServingBaseService\n"
        "class S(TfServingBaseService):\n"
        "    def _postprocess(self, data):\n"
        "        return {'n': len(data['probs']), 'path': self.model_path}\n"
    )
    hooks = load_hooks(_handler(source), "m", "1", tmp_path, FEATURES)
    assert "model_service" not in sys.modules
    assert "model_service.tfserving_model_service" not in sys.modules
    body = hooks.postprocess({"probs": np.zeros((3, 4), np.float32)})
    assert json.loads(body) == {"n": 3, "path": str(tmp_path)}
    # A handler written for one sample gets its batch axis; float64 becomes the input's FP32.
    one = load_hooks(_handler(ONE_SAMPLE), "m", "1", tmp_path, FEATURES)
    got = one.preprocess({})["features"]
    assert got.shape == (1, 16) and got.dtype == np.float32


ONE_SAMPLE = """\
from model_service.tfserving_model_service import TfServingBaseService
class S(TfServingBaseService):
    def _preprocess(self, data):
        return {"features": [0.5] * 16}
"""


def test_hook_errors_map_to_the_right_agent_errors(tmp_path: Path) -> None:
    source = (
        "from model_service.tfserving_model_service import TfServingBaseService\n"
        "class S(TfServingBaseService):\n"
        "    def _preprocess(self, data):\n"
        "        return {'features': data['value']}\n"
        "    def _postprocess(self, data):\n"
        "        raise KeyError('no such output')\n"
    )
    hooks = load_hooks(_handler(source), "m", "1", tmp_path, FEATURES)
    with pytest.raises(InvalidInput, match="_preprocess raised KeyError: 'value'"):
        hooks.preprocess({})
    with pytest.raises(InvalidInput, match="does not convert to FP32"):
        hooks.preprocess({"value": "text"})
    with pytest.raises(InferenceFailed, match="_postprocess raised KeyError"):
        hooks.postprocess({"probs": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidInput, match="'request' is not valid JSON"):
        hooks.request_data([_Bytes("request", [b"{not json"])])
    files = hooks.request_data([_Bytes("images", [b"a", b"b"])])
    assert {k: v.read() for k, v in files["images"].items()} == {"images_0": b"a", "images_1": b"b"}


def test_handler_without_a_service_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HandlerLoadError, match="exactly one class derived from"):
        load_hooks(_handler("x = 1\n"), "m", "1", tmp_path, FEATURES)
    with pytest.raises(HandlerLoadError, match="failed to import: SyntaxError"):
        load_hooks(_handler("def (:\n"), "m", "1", tmp_path, FEATURES)


class _Bytes:
    def __init__(self, name: str, items: list[bytes]) -> None:
        self.name = name
        self.datatype = "BYTES"
        self.data = np.array(items, dtype=object)
