"""A real control plane served over HTTP for the browser tests, and the browser.

The app runs with its whole lifespan (embedded broker on a free port, training runtime,
conversions) under uvicorn on a socket bound to port 0, in a thread of the test process; the
browser is the system Chromium driven by Playwright. Screenshots go to ``test-artifacts/``
(git-ignored) at the repository root.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Served:
    app: FastAPI
    base: str
    settings: Settings

    @property
    def token(self) -> str:
        return self.settings.api_token.get_secret_value()


def serve(settings: Settings) -> Iterator[Served]:
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the control plane did not start")
        time.sleep(0.05)
    try:
        yield Served(app, f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def shot(page: Any, name: str) -> None:
    """A full-page screenshot of what the browser shows now."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
