"""The command line's side of ``edgeagent.v1.AgentService``: calls a running agent, returns JSON.

Replies come back as plain dicts (``MessageToDict``), so ``cli.py`` prints them without touching
protobuf types. Errors are ``grpc.RpcError``, which the command line reports as one line. With a
token (the agent's ``auth_token`` / ``auth_token_file``) every call carries
``authorization: Bearer <token>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from protos.gen import agent_pb2, agent_pb2_grpc


class AgentClient:
    def __init__(self, address: str, token: str | None = None) -> None:
        channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def install(
        self, package: Path, activate: bool, upload: bool, timeout: float
    ) -> dict[str, Any]:
        """Install by path (the agent reads the file) or, with ``upload``, by sending its bytes."""
        if upload:
            req = agent_pb2.InstallPackageRequest(archive=package.read_bytes(), activate=activate)
        else:
            req = agent_pb2.InstallPackageRequest(path=str(package), activate=activate)
        return MessageToDict(
            self._stub.InstallPackage(req, timeout=timeout, metadata=self._metadata)
        )

    def status(self) -> dict[str, Any]:
        return MessageToDict(
            self._stub.GetStatus(agent_pb2.GetStatusRequest(), metadata=self._metadata)
        )

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
        return MessageToDict(self._stub.SubmitBatchJob(req, metadata=self._metadata))

    def get_batch(self, job_id: str) -> dict[str, Any]:
        req = agent_pb2.GetBatchJobRequest(job_id=job_id)
        return MessageToDict(self._stub.GetBatchJob(req, metadata=self._metadata))
