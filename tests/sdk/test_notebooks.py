"""Notebooks against a real JupyterLab: through the proxy (HTTP and kernel websocket) with the
control plane's auth, reading the dataset version, export to a training job and a model, stop and
start, idle stop, and a control-plane restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from edge_inference_sdk import Unauthorized, Unavailable
from edge_inference_sdk.cli import main
from tests.sdk.conftest import Stack
from tests.sdk.kernel import execute
from tests.sdk.live import API_TOKEN

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}

# A notebook with notebook-only lines the export must rewrite; it trains a tiny Keras model on
# the dataset version, reading its arguments as a notebook or, exported, as a script.
TRAIN_CELLS = [
    "%matplotlib inline\n!echo preparing",
    """import edge_training as et
import numpy as np
from PIL import Image

data_url, train_url, hp = et.notebook_or_script_args({"epochs": 1})
labels = et.class_names(data_url)
items = et.read_manifest(data_url)
display(len(items))""",
    """import keras

def load(split):
    rows = [it for it in items if it["split"] == split]
    x = np.stack([np.asarray(Image.open(it["path"]).convert("L").resize((8, 8))) / 255.0
                  for it in rows]).astype("float32")[..., None]
    return x, np.array([labels.index(it["labels"][0]) for it in rows])

x_train, y_train = load("train")
x_val, y_val = load("validation")
model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Flatten(),
                          keras.layers.Dense(len(labels), activation="softmax", name="scores")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=int(hp["epochs"]), verbose=0)
pred = model.predict(x_val, verbose=0).argmax(axis=1)
et.report_metrics(train_url, et.classification_metrics(y_val.tolist(), pred.tolist(), labels))
model.save(f"{train_url}/model.keras")
et.describe_model(train_url, labels=labels)""",
]


@pytest.fixture(scope="module")
def notebook(stack: Stack) -> Any:
    nb = stack.client.notebooks.create(
        "dev", stack.dataset_id, stack.version, example="digits_image_classification"
    )
    assert nb.state == "starting"
    return stack.client.notebooks.wait_running(nb.id, timeout=180)


def _proxy(stack: Stack, nb_id: str) -> httpx.Client:
    return httpx.Client(base_url=f"{stack.url}/notebooks/{nb_id}", headers=BEARER, timeout=60)


def test_proxy_refuses_requests_without_the_control_planes_auth(
    stack: Stack, notebook: Any
) -> None:
    base = f"{stack.url}/notebooks/{notebook.id}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "token x"}):
        r = httpx.get(f"{base}/api/contents", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "Unauthorized"
    # Jupyter's own token is not the control plane's: it never reaches the browser anyway.
    r = httpx.get(f"{base}/api/contents?token=not-the-api-token")
    assert r.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{base.removeprefix('http://')}/api/events/subscribe", proxy=None)
    assert refused.value.response.status_code == 403
    # ?token= once: a cookie scoped to the notebook carries the browser from then on.
    with httpx.Client() as browser:
        r = browser.get(f"{base}/lab?token={API_TOKEN}")
        assert r.status_code == 200 and "JupyterLab" in r.text
        assert browser.cookies.get("edge_notebook_token") == API_TOKEN
        assert browser.get(f"{base}/api/contents").status_code == 200


def test_kernel_reads_the_dataset_version_over_the_proxied_websocket(
    stack: Stack, notebook: Any
) -> None:
    files = [f.path for f in stack.client.notebooks.files(notebook.id)]
    assert files == ["digits_image_classification.ipynb"]
    assert notebook.data_url and notebook.url == f"/notebooks/{notebook.id}/lab"
    with _proxy(stack, notebook.id) as proxy:
        kernel = proxy.post("/api/kernels", json={"name": "python3"})
        assert kernel.status_code == 201, kernel.text
        ws_url = f"ws://{stack.url.removeprefix('http://')}/notebooks/{notebook.id}"
        ws_url += f"/api/kernels/{kernel.json()['id']}/channels"
        code = (
            "import os, edge_training as et\n"
            "items = et.read_manifest(os.environ['DATA_URL'])\n"
            "print(len(items), sorted({i['split'] for i in items}), os.environ['DATA_URL'])\n"
            "try:\n"
            "    open(items[0]['path'], 'ab')\n"
            "    print('writable', os.geteuid() == 0)\n"
            "except PermissionError:\n"
            "    print('read-only')\n"
        )
        out = execute(ws_url, BEARER, code).splitlines()
        count, splits, data_url = out[0].split(" ", 1)[0], out[0], out[0].rsplit(" ", 1)[1]
        assert int(count) == stack.sample_count
        assert "['train', 'validation']" in splits
        assert data_url == notebook.data_url
        # Files are 0444: refused, except to root, which ignores modes (documented).
        assert out[1] in ("read-only", "writable True")
        assert proxy.delete(f"/api/kernels/{kernel.json()['id']}").status_code == 204


def test_export_runs_as_a_training_job_and_registers_a_model(
    stack: Stack,
    notebook: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_INFERENCE_URL", stack.url)
    monkeypatch.setenv("EDGE_INFERENCE_TOKEN", API_TOKEN)
    c = stack.client
    doc = new_notebook(cells=[new_code_cell(s) for s in TRAIN_CELLS])
    doc.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    with _proxy(stack, notebook.id) as proxy:
        body = {"type": "notebook", "format": "json", "content": nbformat.writes(doc)}
        body["content"] = nbformat.reads(body["content"], as_version=4)
        r = proxy.put("/api/contents/train_nb.ipynb", json=body)
        assert r.status_code in (200, 201), r.text
        r = proxy.put("/api/contents/helpers.py", json={"type": "file", "format": "text",
                                                       "content": "SCALE = 1\n"})  # fmt: skip
        assert r.status_code in (200, 201), r.text
    export = c.notebooks.export(notebook.id, "train_nb.ipynb")
    assert export.boot_file == "train_nb.py"
    assert sorted(export.files) == ["helpers.py", "train_nb.py"]  # no notebooks, no dataset link
    reasons = {(ch.cell, ch.line): ch.reason for ch in export.changes}
    assert reasons == {
        (0, 1): "line magic",
        (0, 2): "shell command",
        (1, 8): "display() printed instead",
    }
    assert "print(len(items))" in export.script and "get_ipython" not in export.script
    # The same through eictl: the same content, so the same code id.
    code = main(["--json", "notebooks", "export", notebook.id, "train_nb.ipynb"])
    assert code == 0 and json.loads(capsys.readouterr().out)["code_id"] == export.code_id
    assert main(["--token", API_TOKEN, "notebooks", "open", notebook.id]) == 0
    opened = capsys.readouterr().out.split()
    assert opened[-2] == f"{stack.url}/notebooks/{notebook.id}/lab?token={API_TOKEN}"
    job = c.training.create_job(
        "from-notebook", "script", code_id=export.code_id, boot_file=export.boot_file,
        dataset_id=stack.dataset_id, dataset_version=stack.version,
        hyperparameters={"epochs": 2},
    )  # fmt: skip
    job = c.training.wait(job.id, timeout=300, poll_s=0.5)
    assert job.state == "succeeded", job.log_tail
    assert job.hyperparameters == {"epochs": 2}
    assert 0 <= job.metrics["accuracy"] <= 1  # type: ignore[index]
    mv = c.models.register("from-notebook", job.id, targets=["onnx-fp32"])
    mv = c.models.wait(mv.name, mv.version, timeout=300, poll_s=0.5)
    assert mv.state == "ready" and mv.dataset_version == stack.version
    seen: list[tuple[int, int | None]] = []
    path = c.models.download(
        mv.name, mv.version, tmp_path, progress=lambda d, t: seen.append((d, t))
    )
    assert path.name == f"{mv.package_digest}.edgepkg"
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert c.packages.get(mv.package_digest or "").size == path.stat().st_size


def test_export_refuses_bad_paths(stack: Stack, notebook: Any) -> None:
    c = stack.client
    with pytest.raises(Exception) as outside:
        c.notebooks.export(notebook.id, "../../../etc/passwd")
    assert getattr(outside.value, "status", None) == 422
    with pytest.raises(Exception) as missing:
        c.notebooks.export(notebook.id, "nope.ipynb")
    assert getattr(missing.value, "status", None) == 404
    # The server keeps serving: the next call answers.
    assert c.notebooks.get(notebook.id).state == "running"


def test_stop_then_start_keeps_the_files(stack: Stack, notebook: Any) -> None:
    c = stack.client
    stopped = c.notebooks.stop(notebook.id)
    assert stopped.state == "stopped" and stopped.reason == "stopped by request"
    r = httpx.get(f"{stack.url}/notebooks/{notebook.id}/api/contents", headers=BEARER)
    assert r.status_code == 503 and r.json()["error"] == "Unavailable"
    c.notebooks.start(notebook.id)
    running = c.notebooks.wait_running(notebook.id, timeout=180)
    assert running.state == "running"
    assert "train_nb.ipynb" in {f.path for f in c.notebooks.files(notebook.id)}
    with _proxy(stack, notebook.id) as proxy:
        assert proxy.get("/api/contents/train_nb.ipynb").status_code == 200


def test_idle_notebook_stops_by_itself(stack: Stack) -> None:
    c = stack.client
    nb = c.notebooks.create("idle", idle_s=1)
    c.notebooks.wait_running(nb.id, timeout=180)
    deadline = time.monotonic() + 60
    # Listing is not activity (reading this one notebook is): poll the list.
    while (current := next(n for n in c.notebooks.list() if n.id == nb.id)).state == "running":
        assert time.monotonic() < deadline, current
        time.sleep(0.5)
    assert current.state == "stopped" and current.reason.startswith("idle for"), current
    with pytest.raises(Unavailable):
        c.notebooks.wait_running(nb.id)


def test_a_control_plane_restart_adopts_running_notebooks(stack: Stack, notebook: Any) -> None:
    before = stack.client.notebooks.get(notebook.id)
    assert before.state == "running"
    stack.restart()
    after = stack.client.notebooks.get(notebook.id)
    assert after.state == "running", after
    with _proxy(stack, notebook.id) as proxy:
        assert proxy.get("/api/contents/train_nb.ipynb").status_code == 200
    with pytest.raises(Unauthorized):
        type(stack.client)(stack.url, "wrong-token", retries=0).notebooks.list()
