"""User scripts (Keras on the control plane's Python, MXNet on .venv-mxnet) train and register;
TensorBoard starts over a job's events, serves its scalars, and stops (by request and when idle)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.training.conftest import Plane


def test_keras_script_trains_and_registers(plane: Plane) -> None:
    job = plane.script_job("keras-script", "keras_train.py", hyperparameters={"epochs": 8})
    done = plane.wait_job(job["id"])
    assert done["state"] == "succeeded", done["log_tail"]
    assert done["metrics"]["accuracy"] > 0.3  # chance is 0.1
    assert "epoch 7 val_accuracy" in done["log_tail"]
    r = plane.api.post(
        plane.url("/models"),
        json={"name": "keras-script", "job_id": job["id"], "targets": ["onnx-fp32", "tflite-fp32"]},
    )
    assert r.status_code == 202, r.text
    mv = plane.wait_model("keras-script", "1")
    assert mv["state"] == "ready", mv["error"]
    assert mv["source_kind"] == "keras" and mv["conversion"]["labels"][0] == "0"
    assert all(v["parity"]["passed"] for v in mv["conversion_report"]["variants"])


def test_mxnet_script_trains_and_registers(plane: Plane, mxnet_python: Path) -> None:
    job = plane.script_job(
        "mxnet-script",
        "mxnet_train.py",
        framework="mxnet",
        hyperparameters={"epochs": 4, "lr": 0.01},
    )
    done = plane.wait_job(job["id"])
    assert done["state"] == "succeeded", done["log_tail"]
    assert str(mxnet_python) in done["log_tail"].splitlines()[0]  # ran on the MXNet venv
    assert done["metrics"]["accuracy"] > 0.3  # chance is 0.1
    scalars = plane.api.get(plane.url(f"/training/jobs/{job['id']}/scalars")).json()["runs"]
    assert len(scalars["."]["val_accuracy"]) == 4
    r = plane.api.post(plane.url("/models"), json={"name": "mxnet-script", "job_id": job["id"]})
    assert r.status_code == 202, r.text
    mv = plane.wait_model("mxnet-script", "1")
    assert mv["state"] == "ready", mv["error"]
    assert (mv["source_kind"], mv["source_framework"]) == ("mxnet", "mxnet")
    assert mv["conversion"]["input_shapes"] == {"data": [-1, 1, 14, 14]}
    report = mv["conversion_report"]
    assert report["framework"] == "mxnet"
    assert any(v["name"] == "onnx-fp32" and v["parity"]["passed"] for v in report["variants"])


def _wait_running(plane: Plane, vid: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = plane.api.get(plane.url(f"/visualizations/{vid}")).json()
        if v["state"] != "starting":
            return dict(v)
        time.sleep(0.5)
    raise AssertionError(f"tensorboard {vid} did not start")


def test_tensorboard_serves_scalars_and_stops(plane: Plane) -> None:
    job = plane.script_job(
        "sleeper-tb", "sleeper.py", hyperparameters={"ticks": 5, "interval": 0.05}
    )
    assert plane.wait_job(job["id"])["state"] == "succeeded"
    r = plane.api.post(plane.url("/visualizations"), json={"job_ids": [job["id"]]})
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    v = _wait_running(plane, vid)
    assert v["state"] == "running", v["reason"]
    assert v["url"].startswith("http://127.0.0.1:") and v["port"] > 0
    assert any(x["id"] == vid for x in plane.api.get(plane.url("/visualizations")).json())

    base = v["url"]
    assert httpx.get(base, timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    series: list = []
    while time.monotonic() < deadline and not series:
        # TensorBoard names a run "<job id>/<folder>"; it loads event files shortly after start.
        runs = [
            x for x in httpx.get(f"{base}data/runs", timeout=10).json() if x.startswith(job["id"])
        ]
        if runs:
            got = httpx.get(
                f"{base}data/plugin/scalars/scalars",
                params={"run": runs[0], "tag": "tick"},
                timeout=10,
            )
            series = got.json() if got.status_code == 200 else []
        if not series:
            time.sleep(1)
    assert [row[2] for row in series] == [0.0, 1.0, 2.0, 3.0, 4.0]

    stopped = plane.api.post(plane.url(f"/visualizations/{vid}/stop")).json()
    assert stopped["state"] == "stopped"
    try:
        httpx.get(base, timeout=2)
        raise AssertionError("tensorboard still answers after stop")
    except httpx.TransportError:
        pass


def test_tensorboard_stops_when_idle(plane: Plane) -> None:
    job = plane.api.get(plane.url("/training/jobs"), params={"name": "sleeper-tb"}).json()
    jid = (
        job[0]["id"]
        if job
        else plane.script_job("sleeper-idle", "sleeper.py", hyperparameters={"ticks": 1})["id"]
    )
    r = plane.api.post(plane.url("/visualizations"), json={"job_ids": [jid], "idle_s": 2})
    vid = r.json()["id"]
    deadline = time.monotonic() + 60
    state = r.json()
    while time.monotonic() < deadline:
        state = next(
            v for v in plane.api.get(plane.url("/visualizations")).json() if v["id"] == vid
        )
        if state["state"] == "stopped":
            break
        time.sleep(0.5)  # listing does not count as activity for one server
    assert state["state"] == "stopped" and state["reason"].startswith("idle"), state
