"""Online services: real agent replicas started, supervised and updated by the control plane.

One control plane (with its lifespan: embedded broker, fleet channel, supervisor) imports the test
MLP as two registered versions, serves version 1 with two replicas, then: a replica killed is
restarted while the other keeps answering; a rolling update to version 2 fails no request; a
control plane that stops gracefully restarts the replicas, one that dies adopts them; a delete
stops everything. A second service serves both versions 90/10, then moves to 0/100 under load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import uvicorn
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.settings import Settings

API = "/api/v1"
TOKEN = "services-test-token-0123456789"
TIMEOUT = 120.0


def _wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _settings(data_dir: Path) -> Settings:
    return Settings(
        dev_mode=True,
        api_token=TOKEN,
        data_dir=data_dir,
        embedded_broker_port=0,
        service_restart_backoff_max_s=1.0,
        service_telemetry_interval_s=1.0,
    )


def _client(data_dir: Path) -> TestClient:
    return TestClient(create_app(_settings(data_dir)), headers={"Authorization": f"Bearer {TOKEN}"})


def _import(api: TestClient, path: Path, name: str) -> str:
    with open(path, "rb") as f:
        r = api.post(
            f"{API}/models/import",
            files={"file": (path.name, f, "application/octet-stream")},
            data={"name": name},
        )
    assert r.status_code == 202, r.text
    version = r.json()["version"]
    mv = _wait(
        "conversion",
        lambda: (
            (m := api.get(f"{API}/models/{name}/versions/{version}").json())["state"]
            != "converting"
            and m
        ),
    )
    assert mv["state"] == "ready", mv["error"]
    return str(version)


def _infer(address: str) -> str:
    """One request to a replica; returns the model version that answered."""
    client = grpcclient.InferenceServerClient(address)
    try:
        inp = grpcclient.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(np.random.default_rng(0).random((1, 784), dtype=np.float32))
        result = client.infer("mlp", [inp])
        assert result.as_numpy("logits").shape == (1, 10)
        return str(result.get_response().model_version)
    finally:
        client.close()


def _rest_infer(api: TestClient, service: str = "mlp") -> str:
    """One OIP REST request through the control plane's proxy; returns the answering version."""
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 784],
                "datatype": "FP32",
                "data": np.random.default_rng(1).random(784).round(3).tolist(),
            }
        ]
    }
    r = api.post(f"{API}/services/{service}/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["outputs"][0]["name"] == "logits" and out["outputs"][0]["shape"] == [1, 10]
    return str(out["model_version"])


@contextlib.contextmanager
def _served(app: Any) -> Iterator[str]:
    """The running app behind a real HTTP server on a free loopback port (its lifespan already
    runs in the TestClient), for clients that need a socket, like tritonclient.http."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait("the HTTP server", lambda: server.started, timeout=10)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _running(api: TestClient, generation: int = 1, name: str = "mlp") -> dict[str, Any] | None:
    s = api.get(f"{API}/services/{name}").json()
    ok = s["state"] == "running" and s["generation"] == generation
    ok = ok and all(r["installed"] and r["grpc_address"] for r in s["replicas"])
    return s if ok else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="module")
def api(data_dir: Path, models_dir: Path) -> Iterator[TestClient]:
    with _client(data_dir) as client:
        assert _import(client, models_dir / "mlp.tflite", "mlp") == "1"
        assert _import(client, models_dir / "mlp_v2.onnx", "mlp") == "2"
        yield client


def test_online_service_lifecycle(api: TestClient, data_dir: Path) -> None:
    r = api.post(
        f"{API}/services",
        json={"name": "mlp", "models": [{"model": "mlp", "version": "1"}], "replicas": 2},
    )
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "deploying"
    assert api.post(f"{API}/services", json=r.json() | {"type": "online"}).status_code in (409, 422)
    service = _wait("the service running", lambda: _running(api))
    addresses = service["grpc_addresses"]
    assert len(addresses) == 2 and all(_infer(a) == "1" for a in addresses)
    # OIP REST through the control plane, spread over the replicas.
    assert {_rest_infer(api) for _ in range(4)} == {"1"}
    ready = api.get(f"{API}/services/mlp/v2/models/mlp/ready")
    assert ready.status_code == 200
    meta = api.get(f"{API}/services/mlp/v2/models/mlp").json()
    assert meta["name"] == "mlp" and meta["inputs"][0]["name"] == "input"
    bad = api.post(f"{API}/services/mlp/v2/models/mlp/infer", content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()  # the agent's own answer
    # An agent's shared memory is for clients on its machine: never reachable through the proxy.
    relayed = api.post(
        f"{API}/services/mlp/v2/systemsharedmemory/region/r/register",
        json={"key": "/edge-proxy-test", "byte_size": 8},
    )
    assert relayed.status_code == 400 and "own machine" in relayed.json()["error"]
    assert api.post(f"{API}/services/nope/v2/models/mlp/infer", json={}).status_code == 404
    unauthenticated = TestClient(api.app).get(f"{API}/services/mlp/v2/models/mlp")
    assert unauthenticated.status_code == 401
    # The stock tritonclient.http, binary tensors both ways, with the service's URL as its base.
    with _served(api.app) as host:
        client = httpclient.InferenceServerClient(f"{host}{API}/services/mlp")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        x = np.random.default_rng(2).random((1, 784), dtype=np.float32)
        inp = httpclient.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput("logits", binary_data=True)
        result = client.infer("mlp", [inp], outputs=[out], headers=auth)
        assert result.as_numpy("logits").shape == (1, 10)
        assert client.is_model_ready("mlp", headers=auth)
        client.close()
    # The replicas are fleet devices of their own, labelled with the service.
    devices = api.get(f"{API}/devices", params={"label": "service=mlp"}).json()
    assert sorted(d["id"] for d in devices) == ["svc-mlp-0", "svc-mlp-1"]

    # A replica killed is restarted; the other keeps answering meanwhile.
    first, second = service["replicas"]
    os.kill(first["pid"], signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert _infer(second["grpc_address"]) == "1"
        assert _rest_infer(api) == "1"  # the proxy skips the dead replica
        answered += 1
        s = api.get(f"{API}/services/mlp").json()
        r0 = s["replicas"][0]
        if r0["restarts"] >= 1 and r0["state"] == "running" and r0["pid"] != first["pid"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the killed replica was not restarted")
    assert answered > 0
    service = _wait("the service running again", lambda: _running(api))
    assert _infer(service["replicas"][0]["grpc_address"]) == "1"

    # A rolling update to version 2: requests to both replicas all along, none fails.
    r = api.patch(f"{API}/services/mlp", json={"models": [{"model": "mlp", "version": "2"}]})
    assert r.status_code == 200 and r.json()["generation"] == 2
    seen: set[str] = set()
    while not (updated := _running(api, generation=2)):
        replicas = api.get(f"{API}/services/mlp").json()["replicas"]
        # One replica at a time: never two given the new version and both still installing.
        assert sum(r["generation"] == 2 and not r["installed"] for r in replicas) <= 1
        for replica in replicas:
            if replica["grpc_address"]:
                seen.add(_infer(replica["grpc_address"]))
    assert all(_infer(a) == "2" for a in updated["grpc_addresses"])
    assert seen <= {"1", "2"}

    # Per-version figures from the replicas' telemetry: 2 wrong-shape requests fail on version 2
    # (none failed there before), and version 1 keeps its figures, compared with version 2.
    wrong = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    for _ in range(2):
        r = api.post(f"{API}/services/mlp/v2/models/mlp/infer", json=wrong)
        assert r.status_code == 400, r.text
    for _ in range(6):
        assert _rest_infer(api) == "2"

    def figures() -> dict[str, Any] | None:
        doc = api.get(f"{API}/services/mlp/versions").json()
        by_version = {f["version"]: f for f in doc["items"]}
        v2 = by_version.get("2")
        done = v2 is not None and v2["errors"] == 2 and v2["requests"] >= 8 and "1" in by_version
        return by_version if done else None

    by_version = _wait("per-version figures", figures)
    v1, v2 = by_version["1"], by_version["2"]
    assert (v1["serving"], v2["serving"]) == (False, True)
    assert v1["requests"] > 0 and v1["p99_ms"] is not None and v2["p99_ms"] is not None
    assert v2["error_rate"] == pytest.approx(2 / v2["requests"])
    assert sorted(r["device_id"] for r in v2["replicas"]) == ["svc-mlp-0", "svc-mlp-1"]
    assert v2["vs_baseline"] is None and v1["vs_baseline"]["baseline"] == "2"
    assert v1["vs_baseline"]["p99_ratio"] == pytest.approx(v1["p99_ms"] / v2["p99_ms"])
    assert api.get(f"{API}/services/nope/versions").status_code == 404

    # Bad requests are refused clearly.
    unknown = api.post(
        f"{API}/services", json={"name": "x", "models": [{"model": "nope", "version": "1"}]}
    )
    assert unknown.status_code == 404
    assert api.get(f"{API}/services/nope").status_code == 404


def test_weighted_versions(api: TestClient) -> None:
    """Two versions of one model at 90/10 over two replicas; then 0/100 rolled out under load."""

    def models(w1: int, w2: int) -> list[dict[str, Any]]:
        return [
            {"model": "mlp", "version": "1", "weight": w1},
            {"model": "mlp", "version": "2", "weight": w2},
        ]

    for bad, why in (
        (models(90, 20), "sum to 110"),
        ([{"model": "mlp", "version": "1", "weight": 90}, {"model": "mlp", "version": "2"}], ""),
        ([{"model": "mlp", "version": "1"}, {"model": "mlp", "version": "1"}], "once"),
    ):
        r = api.post(f"{API}/services", json={"name": "ab", "models": bad})
        assert r.status_code == 422 and why in r.text, r.text
    r = api.post(f"{API}/services", json={"name": "ab", "models": models(90, 10), "replicas": 2})
    assert r.status_code == 201, r.text
    assert [m["weight"] for m in r.json()["models"]] == [90, 10]
    _wait("the weighted service running", lambda: _running(api, name="ab"))
    answers = [_rest_infer(api, "ab") for _ in range(400)]
    share = answers.count("2") / len(answers)
    assert set(answers) == {"1", "2"} and abs(share - 0.10) <= 0.03, share

    assert api.patch(f"{API}/services/ab", json={"models": models(90, 5)}).status_code == 422
    r = api.patch(f"{API}/services/ab", json={"models": models(0, 100)})
    assert r.status_code == 200 and r.json()["generation"] == 2
    served = 0
    while not _running(api, generation=2, name="ab"):
        replicas = api.get(f"{API}/services/ab").json()["replicas"]
        assert sum(r["generation"] == 2 and not r["installed"] for r in replicas) <= 1
        for _ in range(5):
            assert _rest_infer(api, "ab") in {"1", "2"}  # asserts a 200 each time
            served += 1
    assert served > 0
    assert {_rest_infer(api, "ab") for _ in range(40)} == {"2"}
    # Version 1 (weight 0) is still held: a request naming it gets it.
    x = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
    r = api.post(f"{API}/services/ab/v2/models/mlp/versions/1/infer", json={"inputs": [x]})
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text

    def both() -> list[dict[str, Any]] | None:
        items = api.get(f"{API}/services/ab/versions").json()["items"]
        return items if len(items) == 2 else None

    versions = _wait("figures of both versions", both)
    assert [(v["version"], v["serving"], v["weight"]) for v in versions] == [
        ("1", True, 0),
        ("2", True, 100),
    ]
    assert api.delete(f"{API}/services/ab").status_code == 204


def test_replicas_outlive_a_control_plane_restart(api: TestClient, data_dir: Path) -> None:
    before = _wait("the service running", lambda: _running(api, generation=2))
    pids = [r["pid"] for r in before["replicas"]]
    # Simulate a control plane killed with SIGKILL: its supervisor stops without ending the
    # replicas (a graceful stop would end them).
    supervisor = api.app.state.services  # type: ignore[attr-defined]
    supervisor._stop.set()
    supervisor._wake.set()
    supervisor._thread.join(timeout=10)
    supervisor._procs.clear()
    assert all(_alive(p) for p in pids)
    with _client(data_dir) as again:
        after = _wait("the service running", lambda: _running(again, generation=2))
        assert [r["pid"] for r in after["replicas"]] == pids  # adopted, not restarted
        assert all(_infer(a) == "2" for a in after["grpc_addresses"])
        # A graceful stop of this one ends the replicas...
    _wait("replicas stopped", lambda: not any(_alive(p) for p in pids), timeout=30)
    # ...and the next start starts them again.
    with _client(data_dir) as third:
        after = _wait("the service running", lambda: _running(third, generation=2))
        assert all(_infer(a) == "2" for a in after["grpc_addresses"])
        new_pids = [r["pid"] for r in after["replicas"]]
        assert r_delete(third) == 204
        _wait("replicas stopped", lambda: not any(_alive(p) for p in new_pids), timeout=30)
        assert third.get(f"{API}/services/mlp").status_code == 404
        assert third.get(f"{API}/devices", params={"label": "service=mlp"}).json() == []
        assert not (data_dir / "services" / "mlp").exists()


def r_delete(api: TestClient) -> int:
    return api.delete(f"{API}/services/mlp").status_code
