"""A real control plane for the SDK, CLI and notebook tests: uvicorn on a free loopback port,
lifespan included (migrations, embedded broker on a free port, training runtime, notebooks)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from control_plane.app import create_app
from control_plane.core.settings import Settings

API_TOKEN = "client-test-token-0123456789"


def live_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dev_mode": True,  # the registry generates its signing key
        "api_token": API_TOKEN,
        "mqtt_password": "client-test-mqtt-password",
        "data_dir": data_dir,
        "embedded_broker_port": 0,
        "port": 0,
    }
    values.update(overrides)
    return Settings(**values)


class LiveServer:
    """``with LiveServer(settings) as url:`` serves the app until the block ends."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        """``port``: 0 for any free one; an earlier server's port to come back on it."""
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-control-plane")
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
