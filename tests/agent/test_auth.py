"""Bearer-token auth on both transports, with a positive control next to every refusal.

One agent runs with ``auth_token_file`` and binds 0.0.0.0 (which it may only do with a token);
tests reach it on loopback. Health checks (HTTP ``/v2/health/*``, gRPC health, ServerLive and
ServerReady) stay open; everything else, ``AgentService`` included, needs the token.
Never import ``protos.gen.inference_pb2`` or ``edge_agent.grpc`` here (tritonclient owns the
``inference`` protobuf package in this process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as tch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from protos.gen import agent_pb2, agent_pb2_grpc
from tests.agent.agent_process import AgentProcess

TOKEN = "s3cret-token-for-tests-0123456789"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-token-0123456789"}
X = np.ones((1, 784), np.float32)


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
) -> Iterator[AgentProcess]:
    work = tmp_path_factory.mktemp("auth-agent")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    a = AgentProcess(
        work,
        [keys["public"]],
        grpc_host="0.0.0.0",
        http_host="0.0.0.0",
        auth_token_file=str(token_file),
    )
    a.start()
    try:
        a.token = TOKEN
        assert a.install(make_package("mlp", "1", [models_dir / "mlp.onnx"])).result.outcome == (
            "COMMITTED"
        )
        yield a
    finally:
        a.stop()


def mlp_doc() -> dict:
    return {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [1.0] * 784}]
    }


# --------------------------------------------------------------------------------------------
# HTTP


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2"),
        ("GET", "/v2/models/mlp"),
        ("GET", "/v2/models/mlp/ready"),
        ("GET", "/v2/models/mlp/config"),
        ("GET", "/v2/models/stats"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/models/mlp/infer"),
        ("GET", "/v2/no/such/route"),
    ],
)
def test_http_needs_the_token(agent: AgentProcess, method: str, path: str) -> None:
    body = json.dumps(mlp_doc()) if path.endswith("/infer") else None
    url = agent.http_url + path
    for headers in ({}, WRONG, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.request(method, url, content=body, headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
    r = httpx.request(method, url, content=body, headers=GOOD, timeout=10)
    assert r.status_code == (404 if "no/such" in path else 200), r.text
    lower = {"authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert httpx.request(method, url, content=body, headers=lower, timeout=10).status_code != 401


def test_http_health_stays_open(agent: AgentProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(agent.http_url + path, timeout=10).status_code == 200


def test_unauthenticated_upload_is_not_buffered(agent: AgentProcess) -> None:
    """Refused on its headers: even a body past the size limit gets 401, not 413."""
    big = b"\0" * (65 * 1024 * 1024)
    r = httpx.post(f"{agent.http_url}/v2/models/mlp/infer", content=big, timeout=60)
    assert r.status_code == 401


def test_tritonclient_http_with_headers(agent: AgentProcess) -> None:
    client = tch.InferenceServerClient(agent.http_address)
    inp = tch.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", [inp])
    assert err.value.status() == "401"
    assert client.infer("mlp", [inp], headers=GOOD).as_numpy("logits").shape == (1, 10)
    assert client.is_server_ready()  # open
    client.close()


# --------------------------------------------------------------------------------------------
# gRPC


def test_grpc_inference_needs_the_token(agent: AgentProcess) -> None:
    client = tcg.InferenceServerClient(agent.address)
    inp = tcg.InferInput("input", [1, 784], "FP32")
    inp.set_data_from_numpy(X)
    for headers in (None, {"authorization": WRONG["Authorization"]}):
        for call in (
            lambda h=headers: client.infer("mlp", [inp], headers=h),
            lambda h=headers: client.get_model_metadata("mlp", headers=h),
            lambda h=headers: client.get_inference_statistics("mlp", headers=h),
            lambda h=headers: client.is_model_ready("mlp", headers=h),
        ):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    good = {"authorization": f"Bearer {TOKEN}"}
    assert client.infer("mlp", [inp], headers=good).as_numpy("logits").shape == (1, 10)
    assert client.get_model_metadata("mlp", headers=good).name == "mlp"
    # OIP's own health RPCs stay open
    assert client.is_server_live() and client.is_server_ready()
    client.close()


def test_grpc_health_stays_open(agent: AgentProcess) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_agent_service_needs_the_token(
    agent: AgentProcess, make_package: Callable[..., Path], models_dir: Path
) -> None:
    pkg = make_package("mlp", "2", [models_dir / "mlp_v2.onnx"])
    with grpc.insecure_channel(agent.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        req = agent_pb2.InstallPackageRequest(path=str(pkg), activate=False)
        for metadata in ((), (("authorization", WRONG["Authorization"]),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.InstallPackage(req, timeout=60, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=5, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.InstallPackage(req, timeout=60, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert ok.result.outcome == "COMMITTED"


def test_cli_sends_the_token_from_the_config(agent: AgentProcess, tmp_path: Path) -> None:
    def status(config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    cfg = yaml.safe_load(agent.config_path.read_text())  # grpc_port 0: point it at the agent
    cfg.update(grpc_host="127.0.0.1", grpc_port=agent.grpc_port, http_port=-1)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg))
    done = status(good)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"][0]["name"] == "mlp"
    cfg.pop("auth_token_file")
    cfg["auth_token"] = "a-wrong-token-of-enough-length"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(cfg))
    done = status(wrong)
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr


# --------------------------------------------------------------------------------------------
# start-up rules


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"grpc_host": "0.0.0.0"}, "grpc_host '0.0.0.0'"),
        ({"http_host": "0.0.0.0"}, "http_host '0.0.0.0'"),
        ({"http_host": "192.0.2.1"}, "http_host '192.0.2.1'"),
        ({"auth_token": "short"}, "at least 16 characters"),
        ({"auth_token": TOKEN, "auth_token_file": "/x"}, "not both"),
        ({"auth_token_file": "/no/such/token"}, "cannot read it"),
    ],
)
def test_refuses_to_start_without_a_usable_token(
    start_agent: Callable[..., AgentProcess], settings: dict, fragment: str
) -> None:
    with pytest.raises(RuntimeError, match="exited with 1") as err:
        start_agent("refused", **settings)
    assert fragment in str(err.value)


def test_loopback_and_disabled_http_need_no_token(
    start_agent: Callable[..., AgentProcess],
) -> None:
    a = start_agent(
        "loopback", grpc_host="localhost", http_host="0.0.0.0", http_port=-1, metrics_port=-1
    )
    assert a.http_port == 0  # HTTP off: its host does not matter
    assert a.status().ready
    assert "HTTP off, metrics off" in a.log_path.read_text()  # not "port 0"
