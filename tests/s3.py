"""An S3-compatible server for tests: moto in server mode, started on a free loopback port.

No MinIO package exists in the registries this project installs from; moto's server speaks the
S3 HTTP API (multipart uploads, ranges, metadata, listing), which is all the control plane uses,
and the control plane talks to it exactly as to any S3 service (endpoint URL + credentials).
Each test gets its own bucket so tests never see each other's objects.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"

# A mark like tests/pg.py's: run the tests that use ``blob_storage`` with local folders and S3.
BOTH_STORES = pytest.mark.stores("local", "s3")


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        name = f"edge-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "cp") -> dict[str, Any]:
        """Control-plane settings (flat names) that put storage in ``bucket``."""
        return {
            "storage_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
            "s3_multipart_threshold_bytes": 5 << 20,
            "s3_part_bytes": 5 << 20,
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_s3_server(log: Path) -> S3Server:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited at start:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return S3Server(proc, port, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the S3 server did not listen on {port}:\n{log.read_text()}")
