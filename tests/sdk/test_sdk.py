"""The SDK against a real control plane: typed results, the exception tree from error bodies,
retries on connection errors only, pagination, upload progress."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import httpx
import pytest

from edge_inference_sdk import Client, errors
from edge_inference_sdk.models import Dataset, DatasetVersion
from tests.sdk.conftest import Stack
from tests.sdk.live import API_TOKEN


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting the requests it was asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_typed_results(stack: Stack) -> None:
    ds = stack.client.datasets.get(stack.dataset_id)
    assert isinstance(ds, Dataset) and ds.sample_count == 120
    assert sorted(ds.labels) == [str(d) for d in range(10)]
    version = stack.client.datasets.version(stack.dataset_id, stack.version)
    assert isinstance(version, DatasetVersion)
    assert version.train_count + version.validation_count == version.sample_count
    assert stack.client.datasets.find("digits") == ds
    assert stack.client.health()["status"] == "ok"


def _viewer_token(stack: Stack) -> str:
    """An API token of the viewer the test made (as its account page would issue it)."""
    from control_plane.users.service import UserService

    ctx = stack.server.app.state.ctx
    with ctx.sessions() as session:
        return UserService(session, ctx).create_token("sdk-viewer", "test")[1]


def test_error_bodies_become_one_exception_tree(stack: Stack) -> None:
    c = stack.client
    with pytest.raises(errors.NotFound) as nf:
        c.datasets.get("no-such-dataset")
    assert nf.value.status == 404 and "no-such-dataset" in str(nf.value.detail)
    with pytest.raises(errors.Conflict):
        c.datasets.create("digits")
    with pytest.raises(errors.ValidationError) as invalid:
        c.datasets.create("x", type="not-a-type")
    assert isinstance(invalid.value, errors.InvalidRequest)
    assert "type" in str(invalid.value)
    with Client(stack.url, "wrong-token") as bad, pytest.raises(errors.Unauthorized):
        bad.datasets.list()
    stack.client.users.create("sdk-viewer", "viewer-password", "viewer")
    with Client(stack.url, _viewer_token(stack)) as viewer:
        assert viewer.datasets.list()  # a viewer reads
        with pytest.raises(errors.Forbidden) as forbidden:
            viewer.datasets.create("viewer-made")  # but may not write
    assert forbidden.value.status == 403 and isinstance(forbidden.value, errors.ApiError)
    for exc in (nf.value, invalid.value):
        assert isinstance(exc, errors.ApiError) and isinstance(exc, errors.EdgeInferenceError)


def test_retries_on_connection_errors_only(stack: Stack) -> None:
    counting = CountingTransport()
    url = f"http://127.0.0.1:{_closed_port()}"
    dead = Client(url, "t", retries=2, backoff_s=0.01, http_transport=counting)
    with pytest.raises(errors.ConnectionFailed, match="after 2 retries"):
        dead.datasets.create("x")  # a POST: it never reached a server, so it is retried
    dead.close()
    assert counting.sent == 3
    counting = CountingTransport()
    with Client(stack.url, API_TOKEN, retries=2, http_transport=counting) as live:
        with pytest.raises(errors.Conflict):
            live.datasets.create("digits")
        assert counting.sent == 1  # an answer, even an error, is never retried
        with pytest.raises(errors.NotFound):
            live.training.job("nope")
        assert counting.sent == 2


def test_pagination_walks_every_page(stack: Stack) -> None:
    ids = [s.id for s in stack.client.datasets.samples(stack.dataset_id, page_size=7)]
    assert len(ids) == 120 and len(set(ids)) == 120
    sevens = list(stack.client.datasets.samples(stack.dataset_id, page_size=5, label="7"))
    assert len(sevens) == 12 and all(s.annotations[0].label == "7" for s in sevens)


def test_upload_reports_progress(stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.py", "print('hello')\n")
        zf.writestr("blob.bin", bytes(range(256)) * 4096)  # 1 MiB, several reads
    seen: list[tuple[int, int | None]] = []
    code = stack.client.training.upload_code(archive, progress=lambda d, t: seen.append((d, t)))
    assert sorted(code.files) == ["blob.bin", "train.py"]
    size = archive.stat().st_size
    assert len(seen) > 1 and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # A folder is zipped on the fly: the same files give the same code id.
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "train.py").write_text("print('hello')\n")
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 4096)
    assert stack.client.training.upload_code(folder).files == code.files


def test_upload_files_label_and_delete(stack: Stack) -> None:
    c = stack.client
    files = sorted((stack.tmp / "digits" / "3").glob("*.png"))[:3]
    ds = c.datasets.create("files-upload", labels=["three", "other"])
    seen: list[tuple[int, int | None]] = []
    report = c.datasets.upload_files(
        ds.id, files, label="three", progress=lambda d, t: seen.append((d, t))
    )
    total = sum(f.stat().st_size for f in files)
    assert report.imported == 3 and not report.errors
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    first = next(c.datasets.samples(ds.id))
    assert [a.label for a in first.annotations] == ["three"]
    relabeled = c.datasets.label(ds.id, first.id, "other")
    assert [a.label for a in relabeled.annotations] == ["other"]
    assert c.datasets.stats(ds.id).labeled == 3
    c.datasets.delete(ds.id)
    with pytest.raises(errors.NotFound):
        c.datasets.get(ds.id)


def test_the_same_code_over_an_in_process_app(tmp_path: Path) -> None:
    # The demo's steps run either against a served control plane or an in-process app.
    from fastapi.testclient import TestClient

    from tests.datasets.conftest import API_TOKEN as TOKEN
    from tests.datasets.conftest import brokerless_app, make_settings

    app, ctx = brokerless_app(make_settings(tmp_path))
    try:
        with Client(token=TOKEN, http_client=TestClient(app)) as client:
            ds = client.datasets.create("in-process", labels=["a"])
            assert [d.name for d in client.datasets.list()] == ["in-process"]
            with pytest.raises(errors.NotFound):
                client.datasets.get("nope")
            assert ds.labels == ["a"]
        bad = Client(token="wrong", http_client=TestClient(app))
        with pytest.raises(errors.Unauthorized):
            bad.datasets.list()
    finally:
        ctx.close()
