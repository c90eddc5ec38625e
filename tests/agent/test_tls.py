"""TLS and mutual TLS on the agent's gRPC port, with certificates made by the test.

Two agents (real subprocesses): one with a server certificate, one that also requires client
certificates. Each is reached with plain grpcio, with ``tritonclient.grpc`` (the inference
protocol must stay usable from it over TLS) and with the ``edge-agent`` command line, which also
installs their model. This process holds tritonclient's ``inference`` protobuf package, so it
never imports ``edge_agent.grpc``; the AgentService is called through ``protos.gen.agent_pb2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from edge_agent.config import AgentSettings, ClientTlsSettings
from edge_agent.tls import TlsError, load_server_tls
from model_packager.records import SchemaError
from protos.gen import agent_pb2, agent_pb2_grpc
from tests.agent.agent_process import AgentProcess
from tests.agent.test_cli import assert_clean_error, edge_agent
from tests.pki import CertificateAuthority, Issued


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    client: Issued
    rogue_ca: CertificateAuthority  # trusted by nobody
    rogue_client: Issued  # a client certificate signed by the rogue CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = CertificateAuthority(folder, "ca"), CertificateAuthority(folder / "rogue", "rogue")
    return Pki(ca, ca.server(), ca.client(), rogue, rogue.client("rogue-client"))


def _client_config(folder: Path, agent: AgentProcess, **cli_tls: Any) -> Path:
    """A config for the command line on the agent's machine: its port, and ``cli_tls``."""
    path = folder / f"cli-{agent.grpc_port}-{len(cli_tls)}.yaml"
    doc = {"grpc_port": agent.grpc_port, "cli_tls": {k: str(v) for k, v in cli_tls.items()}}
    path.write_text(yaml.safe_dump(doc))
    return path


def _start_with_mlp(
    folder: Path,
    keys: dict[str, Path],
    package: Path,
    tls: dict[str, str],
    cli_flags: list[str],
) -> AgentProcess:
    """An agent with ``tls``, then ``mlp`` installed through ``edge-agent install`` over TLS."""
    agent = AgentProcess(folder, [keys["public"]], tls=tls).start()
    try:
        done = edge_agent("install", str(package), "--address", agent.address, *cli_flags)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"COMMITTED"' in done.stdout, done.stdout
    except BaseException:
        agent.stop()
        raise
    return agent


@pytest.fixture(scope="module")
def tls_agent(
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
    pki: Pki,
) -> Iterator[AgentProcess]:
    tls = {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}
    package = make_package("mlp", "1", [models_dir / "mlp.onnx"])
    flags = ["--ca-file", str(pki.ca.cert)]
    agent = _start_with_mlp(tmp_path_factory.mktemp("tls-agent"), keys, package, tls, flags)
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def mtls_agent(
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
    pki: Pki,
) -> Iterator[AgentProcess]:
    tls = {
        "cert_file": str(pki.server.cert),
        "key_file": str(pki.server.key),
        "client_ca_file": str(pki.ca.cert),
    }
    package = make_package("mlp", "1", [models_dir / "mlp.onnx"])
    flags = ["--ca-file", str(pki.ca.cert), "--cert-file", str(pki.client.cert)]
    flags += ["--key-file", str(pki.client.key)]
    agent = _start_with_mlp(tmp_path_factory.mktemp("mtls-agent"), keys, package, tls, flags)
    yield agent
    agent.stop()


def _credentials(ca: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def _status(agent: AgentProcess, creds: grpc.ChannelCredentials | None) -> agent_pb2.AgentStatus:
    """GetStatus over a fresh channel: TLS with ``creds``, plaintext without."""
    if creds is None:
        channel = grpc.insecure_channel(agent.address)
    else:
        channel = grpc.secure_channel(agent.address, creds)
    with channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        return stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=10)


def _refused(agent: AgentProcess, creds: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _status(agent, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value


def _infer_matches_onnxruntime(client: tc.InferenceServerClient, models_dir: Path) -> None:
    assert client.is_server_live() and client.is_model_ready("mlp")
    [spec] = client.get_model_metadata("mlp").inputs
    x = np.random.default_rng(3).random((2, *[int(d) for d in spec.shape[1:]]), dtype=np.float32)
    inp = tc.InferInput(spec.name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("mlp", [inp]).as_numpy("logits")
    sess = ort.InferenceSession(str(models_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    [expected] = sess.run(["logits"], {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# --- TLS --------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_is_served(tls_agent: AgentProcess, pki: Pki) -> None:
    status = _status(tls_agent, _credentials(pki.ca.cert))
    assert status.ready and [m.name for m in status.models] == ["mlp"]
    with grpc.secure_channel(tls_agent.address, _credentials(pki.ca.cert)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "(TLS)" in tls_agent.log()


def test_tritonclient_over_tls(tls_agent: AgentProcess, pki: Pki, models_dir: Path) -> None:
    client = tc.InferenceServerClient(
        tls_agent.address, ssl=True, root_certificates=str(pki.ca.cert)
    )
    try:
        _infer_matches_onnxruntime(client, models_dir)
    finally:
        client.close()


def test_plaintext_and_untrusting_clients_fail(tls_agent: AgentProcess, pki: Pki) -> None:
    _refused(tls_agent, None)
    _refused(tls_agent, _credentials(pki.rogue_ca.cert))  # the agent's CA is not trusted
    plain = tc.InferenceServerClient(tls_agent.address)
    try:
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=10)
    finally:
        plain.close()


def test_cli_over_tls_from_its_config(tls_agent: AgentProcess, pki: Pki, tmp_path: Path) -> None:
    ok = edge_agent(
        "status", "--config", str(_client_config(tmp_path, tls_agent, ca_file=pki.ca.cert))
    )
    assert ok.returncode == 0, ok.stderr
    assert '"name": "mlp"' in ok.stdout
    # The flags reach the channel: the right CA, but a name the certificate is not for.
    wrong = edge_agent(
        "status",
        "--address",
        tls_agent.address,
        "--ca-file",
        str(pki.ca.cert),
        "--server-name",
        "other.example",
    )
    assert_clean_error(wrong, "UNAVAILABLE")


# --- mutual TLS -------------------------------------------------------------------------------


def test_mtls_refuses_clients_without_a_valid_certificate(
    mtls_agent: AgentProcess, pki: Pki
) -> None:
    _refused(mtls_agent, _credentials(pki.ca.cert))  # no client certificate
    _refused(mtls_agent, _credentials(pki.ca.cert, pki.rogue_client))  # signed by another CA
    _refused(mtls_agent, None)


def test_mtls_serves_a_client_with_a_valid_certificate(
    mtls_agent: AgentProcess, pki: Pki, models_dir: Path
) -> None:
    assert _status(mtls_agent, _credentials(pki.ca.cert, pki.client)).ready
    assert "(mutual TLS)" in mtls_agent.log()
    client = tc.InferenceServerClient(
        mtls_agent.address,
        ssl=True,
        root_certificates=str(pki.ca.cert),
        private_key=str(pki.client.key),
        certificate_chain=str(pki.client.cert),
    )
    try:
        _infer_matches_onnxruntime(client, models_dir)
    finally:
        client.close()


def test_cli_over_mtls(mtls_agent: AgentProcess, pki: Pki, tmp_path: Path) -> None:
    config = _client_config(
        tmp_path,
        mtls_agent,
        ca_file=pki.ca.cert,
        cert_file=pki.client.cert,
        key_file=pki.client.key,
    )
    ok = edge_agent("status", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    no_cert = _client_config(tmp_path, mtls_agent, ca_file=pki.ca.cert)
    assert_clean_error(edge_agent("status", "--config", str(no_cert)), "UNAVAILABLE")


# --- settings ---------------------------------------------------------------------------------


def test_tls_settings_are_validated(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"tls\.key_file"):
        AgentSettings(tls={"cert_file": pki.server.cert})  # a certificate without its key
    with pytest.raises(SchemaError, match="does not point to a file"):
        AgentSettings(tls={"cert_file": pki.server.cert, "key_file": tmp_path / "missing.key"})
    with pytest.raises(SchemaError, match="set both or neither"):
        ClientTlsSettings(cert_file=pki.client.cert)
    settings = AgentSettings(
        tls={
            "cert_file": pki.server.cert,
            "key_file": pki.server.key,
            "client_ca_file": pki.ca.cert,
        }
    )
    assert settings.tls is not None and load_server_tls(settings.tls).mutual


def test_tls_files_are_checked_before_binding(
    pki: Pki, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A key of another certificate, or a file that is not PEM, is named as such; gRPC itself
    would only say it failed to bind the address."""
    other = pki.ca.server("other")
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    settings = AgentSettings(tls={"cert_file": pki.server.cert, "key_file": other.key})
    assert settings.tls is not None
    with pytest.raises(TlsError, match="is not the key of the certificate"):
        load_server_tls(settings.tls)
    bad_cert = AgentSettings(tls={"cert_file": not_pem, "key_file": pki.server.key})
    assert bad_cert.tls is not None
    with pytest.raises(TlsError, match="holds no PEM certificate"):
        load_server_tls(bad_cert.tls)

    mismatched = {"cert_file": str(pki.server.cert), "key_file": str(other.key)}
    agent = AgentProcess(tmp_path / "agent", [keys["public"]], tls=mismatched)
    done = edge_agent("validate-config", "--config", str(agent.config_path))
    assert_clean_error(done, "is not the key of the certificate")
    try:
        with pytest.raises(RuntimeError, match="is not the key of the certificate") as info:
            agent.start()
    finally:
        agent.stop()
    assert "Traceback" not in str(info.value)


# --------------------------------------------------------------------------------------------
# the HTTP/REST port takes the same tls section


def _https(agent: AgentProcess) -> str:
    return f"https://127.0.0.1:{agent.http_port}"


def _context(ca: Path, client: Issued | None = None) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def test_http_port_speaks_https_with_the_same_certificate(
    tls_agent: AgentProcess, pki: Pki
) -> None:
    import httpx

    with httpx.Client(verify=_context(pki.ca.cert), timeout=10) as client:
        assert client.get(f"{_https(tls_agent)}/v2/health/ready").status_code == 200
        data = [0.5] * 784
        doc = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": data}]}
        r = client.post(f"{_https(tls_agent)}/v2/models/mlp/infer", json=doc)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]
    with pytest.raises(httpx.TransportError):  # plaintext on the TLS port
        httpx.get(f"http://127.0.0.1:{tls_agent.http_port}/v2/health/ready", timeout=5)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
        httpx.get(f"{_https(tls_agent)}/v2", verify=_context(pki.rogue_ca.cert), timeout=5)


def test_http_port_demands_client_certificates_with_mtls(
    mtls_agent: AgentProcess, pki: Pki
) -> None:
    import httpx

    url = f"{_https(mtls_agent)}/v2/models/mlp"
    for client in (None, pki.rogue_client):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=_context(pki.ca.cert, client), timeout=5)
    r = httpx.get(url, verify=_context(pki.ca.cert, pki.client), timeout=5)
    assert r.status_code == 200 and r.json()["name"] == "mlp"
