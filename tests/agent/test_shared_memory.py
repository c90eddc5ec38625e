"""The system shared-memory extension, end to end with the stock clients.

One agent (a real subprocess) serves ``mlp``, ``add`` (INT32, two inputs) and ``multi``
(FP64 / INT64 / BOOL). Regions are created the way a user creates them,
``tritonclient.utils.shared_memory``, and the stock ``tritonclient.grpc`` and
``tritonclient.http`` clients register them and reference them from requests, unmodified.
Every expected answer is computed independently with onnxruntime. The hostile cases (keys that
are paths, windows past the end, an object shrunk after registration, sizes that do not match
the tensor, too many regions) each get a clear error, and the agent keeps serving.

Never import ``protos.gen.inference_pb2`` or ``edge_agent.grpc`` at module level here:
tritonclient owns the ``inference`` protobuf package in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as tch
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from edge_agent.auth import grpc_peer_is_local, socket_peer_is_local
from edge_agent.errors import InvalidInput
from edge_agent.http import codec
from edge_agent.serving.shared_memory import ShmRef
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key
from tests.agent.agent_process import AgentProcess

RNG = np.random.default_rng(16)
MAX_REGIONS = 6


def ort_run(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], models_dir: Path
) -> Iterator[AgentProcess]:
    d = tmp_path_factory.mktemp("shm")
    key = load_private_key(keys["private"])
    a = AgentProcess(d / "agent", [keys["public"]], shared_memory_max_regions=MAX_REGIONS)
    a.start()
    try:
        for name, artifact in [
            ("mlp", "mlp.onnx"),
            ("add", "add_int.onnx"),
            ("multi", "multi_dtype.onnx"),
        ]:
            spec = BuildSpec(
                name=name, version="1", artifacts=[ArtifactInput(models_dir / artifact)]
            )
            r = a.install(build_package(spec, d / "pkg", key))
            assert r.result.outcome == "COMMITTED", r.result
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def grpc_client(agent: AgentProcess) -> Iterator[tcg.InferenceServerClient]:
    c = tcg.InferenceServerClient(agent.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http_client(agent: AgentProcess) -> Iterator[tch.InferenceServerClient]:
    c = tch.InferenceServerClient(agent.http_address)
    yield c
    c.close()


@pytest.fixture
def regions(
    grpc_client: tcg.InferenceServerClient,
) -> Iterator[Callable[[int], shm.SharedMemoryRegion]]:
    """Create POSIX shared-memory objects (unique keys); all are unregistered and destroyed
    after the test, so every test starts with no region registered."""
    made: list[shm.SharedMemoryRegion] = []

    def create(byte_size: int) -> shm.SharedMemoryRegion:
        tag = uuid.uuid4().hex[:12]
        handle = shm.create_shared_memory_region(f"r{tag}", f"/edge-test-{tag}", byte_size)
        made.append(handle)
        return handle

    yield create
    grpc_client.unregister_system_shared_memory()
    for h in made:
        shm.destroy_shared_memory_region(h)


def _key(handle: shm.SharedMemoryRegion) -> str:
    return handle._shm_key


def _name(handle: shm.SharedMemoryRegion) -> str:
    return handle._triton_shm_name


def _mlp_ok(client: tcg.InferenceServerClient, models_dir: Path) -> None:
    """The agent still answers a plain request correctly."""
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    inp = tcg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("mlp", [inp]).as_numpy("logits")
    want = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the stock clients, unmodified


def test_grpc_inputs_and_outputs_in_shared_memory(
    grpc_client: tcg.InferenceServerClient, regions: Callable, models_dir: Path
) -> None:
    x = RNG.standard_normal((3, 784)).astype(np.float32)
    # Input and output in one object, at offsets, as a camera process would lay out a buffer.
    obj = regions(64 + x.nbytes + 4096 + 3 * 10 * 4)
    shm.set_shared_memory_region(obj, [x], offset=64)
    grpc_client.register_system_shared_memory(_name(obj), _key(obj), obj_size(obj))

    inp = tcg.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory(_name(obj), x.nbytes, offset=64)
    out = tcg.InferRequestedOutput("logits")
    out_offset = 64 + x.nbytes + 4096
    out.set_shared_memory(_name(obj), 3 * 10 * 4, offset=out_offset)
    result = grpc_client.infer("mlp", [inp], outputs=[out])

    tensor = result.get_output("logits")
    assert list(tensor.shape) == [3, 10]
    assert tensor.parameters["shared_memory_region"].string_param == _name(obj)
    assert tensor.parameters["shared_memory_byte_size"].int64_param == 120
    got = shm.get_contents_as_numpy(obj, np.float32, [3, 10], offset=out_offset)
    want = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert result.get_response().raw_output_contents == []  # nothing travelled back in band

    # The next frame reuses the registration: new bytes in, new answer out.
    x2 = RNG.standard_normal((3, 784)).astype(np.float32)
    shm.set_shared_memory_region(obj, [x2], offset=64)
    grpc_client.infer("mlp", [inp], outputs=[out])
    got2 = shm.get_contents_as_numpy(obj, np.float32, [3, 10], offset=out_offset)
    want2 = ort_run(models_dir / "mlp.onnx", {"input": x2})["logits"]
    np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-6)


def obj_size(handle: shm.SharedMemoryRegion) -> int:
    return os.fstat(handle._mpsm_handle._fd).st_size


def test_grpc_register_status_unregister(
    grpc_client: tcg.InferenceServerClient, regions: Callable
) -> None:
    a, b = regions(4096), regions(8192)
    grpc_client.register_system_shared_memory(_name(a), _key(a), 1024, offset=512)
    grpc_client.register_system_shared_memory(_name(b), _key(b), 8192)
    status = grpc_client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status[_name(a)] == {
        "name": _name(a),
        "key": _key(a),
        "offset": "512",
        "byte_size": "1024",
    }
    assert status[_name(b)]["byte_size"] == "8192"
    one = grpc_client.get_system_shared_memory_status(_name(b), as_json=True)["regions"]
    assert list(one) == [_name(b)]

    grpc_client.unregister_system_shared_memory(_name(a))
    status = grpc_client.get_system_shared_memory_status(as_json=True).get("regions", {})
    assert list(status) == [_name(b)]
    grpc_client.unregister_system_shared_memory()  # all
    assert grpc_client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    grpc_client.unregister_system_shared_memory("never-registered")  # not an error, as in Triton

    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_system_shared_memory_status(_name(a))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no shared memory region" in err.value.message()


def test_grpc_mixed_shared_and_in_band_tensors(
    grpc_client: tcg.InferenceServerClient, regions: Callable, models_dir: Path
) -> None:
    """Only ``b`` is in shared memory: ``a`` travels as raw contents (one raw entry for two
    inputs); of the outputs of ``multi``, one goes to shared memory and two come back in band."""
    a = RNG.integers(-100, 100, (2, 4), dtype=np.int32)
    b = RNG.integers(-100, 100, (2, 4), dtype=np.int32)
    obj = regions(b.nbytes)
    shm.set_shared_memory_region(obj, [b])
    grpc_client.register_system_shared_memory(_name(obj), _key(obj), b.nbytes)
    in_a = tcg.InferInput("b", [2, 4], "INT32")
    in_a.set_shared_memory(_name(obj), b.nbytes)
    in_b = tcg.InferInput("a", [2, 4], "INT32")
    in_b.set_data_from_numpy(a)
    got = grpc_client.infer("add", [in_a, in_b]).as_numpy("sum")
    np.testing.assert_array_equal(got, a + b)

    x = {
        "x_fp64": RNG.standard_normal((2, 3)),
        "x_i64": RNG.integers(-5, 5, (2, 3), dtype=np.int64),
        "x_bool": RNG.integers(0, 2, (2, 3)).astype(bool),
    }
    want = ort_run(models_dir / "multi_dtype.onnx", x)
    out_obj = regions(2 * 3 * 8)
    grpc_client.register_system_shared_memory(_name(out_obj), _key(out_obj), 48)
    inputs = []
    datatypes = {"x_fp64": "FP64", "x_i64": "INT64", "x_bool": "BOOL"}
    for name, arr in x.items():
        t = tcg.InferInput(name, list(arr.shape), datatypes[name])
        t.set_data_from_numpy(arr)
        inputs.append(t)
    outs = [tcg.InferRequestedOutput(n) for n in ("y_fp64", "y_i64", "y_bool")]
    outs[1].set_shared_memory(_name(out_obj), 48)
    result = grpc_client.infer("multi", inputs, outputs=outs)
    np.testing.assert_array_equal(result.as_numpy("y_fp64"), want["y_fp64"])
    np.testing.assert_array_equal(result.as_numpy("y_bool"), want["y_bool"])
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_obj, np.int64, [2, 3]), want["y_i64"]
    )


def test_http_inputs_and_outputs_in_shared_memory(
    http_client: tch.InferenceServerClient, regions: Callable, models_dir: Path
) -> None:
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    in_obj, out_obj = regions(x.nbytes), regions(2 * 10 * 4)
    shm.set_shared_memory_region(in_obj, [x])
    http_client.register_system_shared_memory(_name(in_obj), _key(in_obj), x.nbytes)
    http_client.register_system_shared_memory(_name(out_obj), _key(out_obj), 80)
    status = {r["name"]: r for r in http_client.get_system_shared_memory_status()}
    assert status[_name(in_obj)] == {
        "name": _name(in_obj),
        "key": _key(in_obj),
        "offset": 0,
        "byte_size": x.nbytes,
    }
    assert [r["name"] for r in http_client.get_system_shared_memory_status(_name(out_obj))] == [
        _name(out_obj)
    ]

    inp = tch.InferInput("input", [2, 784], "FP32")
    inp.set_shared_memory(_name(in_obj), x.nbytes)
    out = tch.InferRequestedOutput("logits")
    out.set_shared_memory(_name(out_obj), 80)
    result = http_client.infer("mlp", [inp], outputs=[out])
    params = result.get_output("logits")["parameters"]
    assert params == {"shared_memory_region": _name(out_obj), "shared_memory_byte_size": 80}
    got = shm.get_contents_as_numpy(out_obj, np.float32, [2, 10])
    want = ort_run(models_dir / "mlp.onnx", {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Input from shared memory, output back in the response (binary).
    result = http_client.infer("mlp", [inp], outputs=[tch.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-6)

    http_client.unregister_system_shared_memory(_name(in_obj))
    assert [r["name"] for r in http_client.get_system_shared_memory_status()] == [_name(out_obj)]
    http_client.unregister_system_shared_memory()
    assert http_client.get_system_shared_memory_status() == []


# --------------------------------------------------------------------------------------------
# hostile and mistaken input: clear errors, nothing lost, the agent keeps serving


def _grpc_error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_bad_registrations(
    grpc_client: tcg.InferenceServerClient,
    http_client: tch.InferenceServerClient,
    agent: AgentProcess,
    regions: Callable,
    models_dir: Path,
) -> None:
    obj = regions(4096)
    reg = grpc_client.register_system_shared_memory
    cases = [
        (lambda: reg("r", "/no-such-object-here", 16), "no such object"),
        (lambda: reg("r", "/../../etc/passwd", 16), "must be a POSIX shared-memory name"),
        (lambda: reg("r", "/a/b", 16), "must be a POSIX shared-memory name"),
        (lambda: reg("r", "..", 16), "must be a POSIX shared-memory name"),
        (lambda: reg("r", _key(obj), 4096, offset=1), "past the end"),
        (lambda: reg("r", _key(obj), 8192), "past the end"),
        (lambda: reg("r", _key(obj), 0), "byte_size > 0"),
        (lambda: reg("", _key(obj), 16), "region name"),
    ]
    for call, message in cases:
        e = _grpc_error(call)
        assert e.status() == "StatusCode.INVALID_ARGUMENT", e
        assert message in e.message(), (message, e.message())
    reg("r", _key(obj), 16)
    e = _grpc_error(lambda: reg("r", _key(obj), 16))
    assert "already registered" in e.message()
    # The limit: MAX_REGIONS at once, then a clear refusal; one freed makes room again.
    for i in range(MAX_REGIONS - 1):
        reg(f"extra{i}", _key(obj), 16)
    e = _grpc_error(lambda: reg("one-too-many", _key(obj), 16))
    assert f"{MAX_REGIONS} shared memory regions are registered" in e.message()
    grpc_client.unregister_system_shared_memory("extra0")
    reg("one-too-many", _key(obj), 16)

    # HTTP: the same checks, the protocol's error body.
    with httpx.Client(base_url=agent.http_url, timeout=10) as http:
        r = http.post("/v2/systemsharedmemory/region/h/register", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = http.post(
            "/v2/systemsharedmemory/region/h/register", json={"key": _key(obj), "byte_size": -1}
        )
        assert r.status_code == 400 and "byte_size" in r.json()["error"]
        r = http.get("/v2/systemsharedmemory/region/nope/status")
        assert r.status_code == 404 and "no shared memory region" in r.json()["error"]
        r = http.get("/v2/systemsharedmemory/region/h/register")
        assert r.status_code == 405
        # A request relayed by a proxy on this machine (the control plane's service proxy
        # says so with Forwarded) is not local: refused although it arrives over loopback.
        for header in ({"Forwarded": "for=203.0.113.9"}, {"X-Forwarded-For": "203.0.113.9"}):
            r = http.post(
                f"/v2/systemsharedmemory/region/{_name(obj)}-relayed/register",
                json={"key": _key(obj), "byte_size": 16},
                headers=header,
            )
            assert r.status_code == 400, r.text
            assert "only for clients on the agent's own machine" in r.json()["error"]
        r = http.post("/v2/cudasharedmemory/region/c/register", json={})
        assert r.status_code == 501 and "CUDA shared memory is not supported" in r.json()["error"]
    e = _grpc_error(lambda: grpc_client.get_cuda_shared_memory_status())
    assert e.status() == "StatusCode.UNIMPLEMENTED"
    assert "CUDA shared memory is not supported" in e.message()
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        http_client.get_cuda_shared_memory_status()
    _mlp_ok(grpc_client, models_dir)


def test_bad_references_in_requests(
    grpc_client: tcg.InferenceServerClient,
    http_client: tch.InferenceServerClient,
    regions: Callable,
    models_dir: Path,
) -> None:
    x = RNG.standard_normal((1, 784)).astype(np.float32)
    obj = regions(x.nbytes)
    shm.set_shared_memory_region(obj, [x])
    grpc_client.register_system_shared_memory("in", _key(obj), x.nbytes)
    small = regions(16)
    grpc_client.register_system_shared_memory("small", _key(small), 16)

    def infer(
        region: str, byte_size: int, offset: int = 0, shape: tuple = (1, 784), out: tuple = ()
    ) -> None:
        inp = tcg.InferInput("input", list(shape), "FP32")
        inp.set_shared_memory(region, byte_size, offset)
        outputs = None
        if out:
            o = tcg.InferRequestedOutput("logits")
            o.set_shared_memory(*out)
            outputs = [o]
        grpc_client.infer("mlp", [inp], outputs=outputs)

    cases = [
        (lambda: infer("ghost", x.nbytes), "no shared memory region 'ghost'"),
        (lambda: infer("in", x.nbytes, offset=4), "past the end of region 'in'"),
        (lambda: infer("in", x.nbytes, offset=-4), "shared_memory_offset must not be negative"),
        (lambda: infer("in", x.nbytes + 4), "past the end of region 'in'"),
        (lambda: infer("in", x.nbytes - 4), f"needs {x.nbytes}"),
        (lambda: infer("in", x.nbytes, shape=(2, 784)), "needs"),
        (lambda: infer("in", x.nbytes, out=("small", 16)), "needs 40 bytes"),
        (lambda: infer("in", x.nbytes, out=("ghost", 40)), "no shared memory region 'ghost'"),
        (lambda: infer("in", x.nbytes, out=("small", 40)), "past the end of region 'small'"),
    ]
    for call, message in cases:
        e = _grpc_error(call)
        assert e.status() == "StatusCode.INVALID_ARGUMENT", e
        assert message in e.message(), (message, e.message())

    # The HTTP transport, same reference checks.
    inp = tch.InferInput("input", [1, 784], "FP32")
    inp.set_shared_memory("in", x.nbytes, offset=8)
    with pytest.raises(InferenceServerException, match="past the end of region 'in'"):
        http_client.infer("mlp", [inp])
    with httpx.Client(base_url=f"http://{http_client._parsed_url.netloc}", timeout=10) as http:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 784],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": "x"},
                }
            ]
        }
        r = http.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 400 and "shared_memory_byte_size" in r.json()["error"]
        body["inputs"][0]["parameters"] = {"shared_memory_byte_size": 16}
        r = http.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 400 and "without shared_memory_region" in r.json()["error"]

    # A shrunk object: refused with a clear error instead of a SIGBUS that kills the agent.
    os.ftruncate(obj._mpsm_handle._fd, 16)
    e = _grpc_error(lambda: infer("in", x.nbytes))
    assert "was shrunk below the registered window" in e.message()
    _mlp_ok(grpc_client, models_dir)


def test_remote_callers_are_refused() -> None:
    """Shared memory names memory on the agent's machine: remote callers may not use it.
    What counts as local, and the refusal in the HTTP decoder (gRPC's asks the same check)."""
    assert grpc_peer_is_local("ipv4:127.0.0.1:5555")
    assert grpc_peer_is_local("ipv6:[::1]:5555")
    assert grpc_peer_is_local("unix:/run/agent.sock")
    assert not grpc_peer_is_local("ipv4:10.0.0.7:5555")
    assert not grpc_peer_is_local("ipv6:[fe80::1]:5555")
    assert not grpc_peer_is_local("")
    assert socket_peer_is_local(("127.0.0.1", 4000))
    assert socket_peer_is_local(("::1", 4000, 0, 0))
    assert not socket_peer_is_local(("192.168.1.20", 4000))
    assert not socket_peer_is_local(None)

    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 16},
                }
            ]
        }
    ).encode()
    remote = codec.InferWire("mlp", "", body, codec.JSON_TYPE, None, local=False)
    with pytest.raises(InvalidInput, match="only for clients on the agent's own machine"):
        codec.decode(remote)
    local = codec.decode(codec.InferWire("mlp", "", body, codec.JSON_TYPE, None, local=True))
    assert local.inputs[0].shm == ShmRef("r", 0, 16)


def test_readme_example_runs_as_written(agent: AgentProcess, tmp_path: Path) -> None:
    """The README's shared memory example, verbatim apart from the address, against the agent."""
    readme = (Path(__file__).resolve().parents[2] / "edge_agent" / "README.md").read_text()
    section = readme.split("## System shared memory", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"127.0.0.1:8001"' in code
    script = tmp_path / "example.py"
    script.write_text(code.replace('"127.0.0.1:8001"', f'"{agent.address}"'))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "regions" in done.stdout and "cam0-in" in done.stdout  # the status it printed
    printed = done.stdout.split("]]", 1)[0].lstrip("[ \n").split()
    logits = [float(v) for v in printed]  # the ten logits it read from the output region
    assert len(logits) == 10 and any(logits)
