"""Run a real edge agent as a subprocess on free ports, the way a device runs it.

The agent runs out of process because tritonclient (the protocol tests' client) registers the
same protobuf package, ``inference``, as the agent's generated code; one process cannot hold both.
It is also the only honest way to test crash recovery (SIGKILL) and restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from protos.gen import agent_pb2, agent_pb2_grpc


class AgentProcess:
    def __init__(self, workdir: Path, trusted_keys: list[Path], **settings: Any) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "agent.yaml"
        self.port_file = self.workdir / "ports.json"
        self.log_path = self.workdir / "agent.log"
        config = {
            "data_dir": str(self.workdir / "data"),
            "grpc_port": 0,
            "http_port": 0,
            "metrics_port": 0,
            "port_file": str(self.port_file),
            "trusted_keys": [str(k) for k in trusted_keys],
            "log_level": "INFO",
        }
        config.update(settings)
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        # Sent with every AgentService call when the agent requires a token.
        self.token: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        """host:port of the HTTP/REST server (tritonclient.http's ``url``)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    def start(self, env: dict[str, str] | None = None, timeout: float = 30.0) -> AgentProcess:
        self.port_file.unlink(missing_ok=True)
        full_env = {**os.environ, **(env or {})}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.port_file.exists():
                ports = json.loads(self.port_file.read_text())
                self.grpc_port, self.metrics_port = ports["grpc"], ports["metrics"]
                self.http_port = ports.get("http", 0)
                return self
            time.sleep(0.05)
        raise TimeoutError(f"agent did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def agent_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", 512 * 1024 * 1024)]
        )
        return agent_pb2_grpc.AgentServiceStub(channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def install(self, package: Path, activate: bool = True) -> agent_pb2.InstallPackageResponse:
        req = agent_pb2.InstallPackageRequest(path=str(package), activate=activate)
        return self.agent_stub().InstallPackage(req, timeout=120, metadata=self._metadata())

    def status(self) -> agent_pb2.AgentStatus:
        return self.agent_stub().GetStatus(
            agent_pb2.GetStatusRequest(), timeout=10, metadata=self._metadata()
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
