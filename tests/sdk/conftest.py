"""One real control plane (uvicorn on a free port, full lifespan) for the SDK, CLI and notebook
tests of this folder, with a digits dataset uploaded and published through the SDK.

``Stack.restart()`` stops the control plane and starts a new one on the same data folder and
port (a control-plane restart as an operator does it); notebook servers outlive it. At the end
every notebook is deleted, so no JupyterLab process is left behind.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane.core.settings import Settings
from edge_inference_sdk import Client
from tests.datasets.digits import write_digits
from tests.sdk.live import API_TOKEN, LiveServer, live_settings


@dataclass
class Stack:
    settings: Settings
    server: LiveServer
    url: str
    client: Client
    dataset_id: str
    version: str
    sample_count: int
    tmp: Path

    def restart(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.server.__exit__(None, None, None)
        self.server = LiveServer(self.settings, port=port)
        assert self.server.__enter__() == self.url


def zip_dir(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return dest


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("sdk")
    write_digits(tmp / "digits", per_class=12, seed=5)
    archive = zip_dir(tmp / "digits", tmp / "digits.zip")
    # tick: the notebook monitor's default (2 s) is fine; idle stop is tested with idle_s=1.
    settings = live_settings(tmp / "cp", training_max_concurrent=2)
    server = LiveServer(settings)
    url = server.__enter__()
    client = Client(url, API_TOKEN, retries=1, backoff_s=0.05)
    try:
        ds = client.datasets.create("digits", labels=[])
        report = client.datasets.upload_archive(ds.id, archive)
        assert report.imported == 120, report
        version = client.datasets.publish(ds.id, train_ratio=0.75, seed=1)
        stack = Stack(settings, server, url, client, ds.id, version.name, version.sample_count, tmp)
        yield stack
    finally:
        try:
            for nb in client.notebooks.list():
                client.notebooks.delete(nb.id)
        finally:
            client.close()
            stack_server = locals().get("stack")
            (stack_server.server if stack_server else server).__exit__(None, None, None)
