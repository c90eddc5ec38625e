"""The command line's side of ``edgeagent.v1.AgentService``: calls a running agent, returns JSON.

Replies come back as plain dicts (``MessageToDict``), so ``cli.py`` prints them without touching
protobuf types. Errors are ``grpc.RpcError``, which the command line reports as one line.

With ``ClientTlsSettings`` the channel is TLS: the CA to trust for the agent's certificate (else
the system's), the client certificate an agent with mutual TLS asks for, and the name to check
the certificate against when the address is not that name (``127.0.0.1`` on the device itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from edge_agent.config import ClientTlsSettings
from edge_agent.tls import read_file
from protos.gen import agent_pb2, agent_pb2_grpc


def channel_credentials(tls: ClientTlsSettings) -> grpc.ChannelCredentials:
    """TLS credentials from the files ``tls`` names (read now; absent ones stay None); a file
    that cannot be read is a ``TlsError`` naming its setting, one line on the command line."""

    def read(path: Path | None, what: str) -> bytes | None:
        return None if path is None else read_file(path, f"cli_tls.{what}")

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file, "ca_file"),
        private_key=read(tls.key_file, "key_file"),
        certificate_chain=read(tls.cert_file, "cert_file"),
    )


class AgentClient:
    def __init__(self, address: str, tls: ClientTlsSettings | None = None) -> None:
        options: list[tuple[str, str | int]] = [("grpc.max_send_message_length", -1)]
        if tls is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.secure_channel(address, channel_credentials(tls), options=options)
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)

    def install(
        self, package: Path, activate: bool, upload: bool, timeout: float
    ) -> dict[str, Any]:
        """Install by path (the agent reads the file) or, with ``upload``, by sending its bytes."""
        if upload:
            req = agent_pb2.InstallPackageRequest(archive=package.read_bytes(), activate=activate)
        else:
            req = agent_pb2.InstallPackageRequest(path=str(package), activate=activate)
        return MessageToDict(self._stub.InstallPackage(req, timeout=timeout))

    def status(self) -> dict[str, Any]:
        return MessageToDict(self._stub.GetStatus(agent_pb2.GetStatusRequest()))

    def submit_batch(
        self,
        model: str,
        model_version: str,
        output_path: str,
        manifest_path: str = "",
        input_dir: str = "",
    ) -> dict[str, Any]:
        req = agent_pb2.SubmitBatchJobRequest(
            model_name=model, model_version=model_version, output_path=output_path
        )
        if manifest_path:
            req.manifest_path = manifest_path
        else:
            req.input_dir = input_dir
        return MessageToDict(self._stub.SubmitBatchJob(req))

    def get_batch(self, job_id: str) -> dict[str, Any]:
        return MessageToDict(self._stub.GetBatchJob(agent_pb2.GetBatchJobRequest(job_id=job_id)))
