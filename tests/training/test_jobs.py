"""The job runner with plain scripts (no framework import, so these are quick): failure with its
log tail, cancel without orphans, timeout, live logs, re-runs, and orphans after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from control_plane.training.models import TrainingJob
from control_plane.training.runner import ENV_MARKER, JobRunner
from tests.training.conftest import Plane


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(plane: Plane, job_id: str, timeout: float = 60) -> tuple[int, int]:
    path = plane.runtime.runner.output_dir(job_id) / "pids.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("\n"):
            leader, child = path.read_text().split()
            return int(leader), int(child)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never wrote its pids")


def test_failing_script_reports_its_log_tail(plane: Plane) -> None:
    job = plane.script_job("failing", "failing.py", hyperparameters={"lr": 7})
    assert job["state"] in ("queued", "running") and job["version"] == 1
    done = plane.wait_job(job["id"])
    assert done["state"] == "failed"
    assert done["exit_code"] == 1
    assert done["failure_reason"].startswith("exit status 1: ValueError: learning rate 7")
    assert "Traceback" in done["log_tail"] and "starting with lr=7" in done["log_tail"]
    assert "--lr=7" in done["log_tail"] and "--data_url=" in done["log_tail"]
    log = plane.api.get(plane.url(f"/training/jobs/{job['id']}/logs")).text
    assert "ValueError" in log


def test_cancel_kills_the_process_group(plane: Plane) -> None:
    job = plane.script_job("sleeper-cancel", "sleeper.py")
    leader, child = _pids(plane, job["id"])
    assert plane.job(job["id"])["state"] == "running"
    assert not _gone(leader) and not _gone(child)
    r = plane.api.post(plane.url(f"/training/jobs/{job['id']}/cancel"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "canceled"
    assert r.json()["failure_reason"] == "canceled by request"
    # The script and the helper it started are both gone when cancel returns.
    assert _gone(leader) and _gone(child)
    again = plane.api.post(plane.url(f"/training/jobs/{job['id']}/cancel"))
    assert again.status_code == 409


def test_timeout_fails_the_job(plane: Plane) -> None:
    job = plane.script_job("sleeper-timeout", "sleeper.py", timeout_s=2)
    leader, child = _pids(plane, job["id"])
    done = plane.wait_job(job["id"])
    assert done["state"] == "failed"
    assert done["failure_reason"] == "timed out after 2s"
    assert _gone(leader) and _gone(child)


def test_logs_follow_live_until_the_job_ends(plane: Plane) -> None:
    job = plane.script_job(
        "sleeper-logs", "sleeper.py", hyperparameters={"ticks": 8, "interval": 0.25}
    )
    chunks = []
    with plane.api.stream(
        "GET", plane.url(f"/training/jobs/{job['id']}/logs"), params={"follow": "true"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        for chunk in r.iter_text():
            chunks.append(chunk)
    text = "".join(chunks)
    assert len(chunks) > 1  # arrived piecewise while the job ran
    assert all(f"tick {i}" in text for i in range(8)) and "done" in text
    done = plane.job(job["id"])
    assert done["state"] == "succeeded" and done["exit_code"] == 0
    assert done["peak_rss_bytes"] > 0
    # The helper the script left behind went with the job.
    _, child = _pids(plane, job["id"])
    assert _gone(child)
    scalars = plane.api.get(plane.url(f"/training/jobs/{job['id']}/scalars")).json()
    ticks = scalars["runs"]["."]["tick"]
    assert [p["value"] for p in ticks] == [float(i) for i in range(8)]


def test_rerun_keeps_history(plane: Plane) -> None:
    first = plane.script_job("failing-history", "failing.py", hyperparameters={"lr": 1})
    plane.wait_job(first["id"])
    r = plane.api.post(
        plane.url(f"/training/jobs/{first['id']}/versions"), json={"hyperparameters": {"lr": 2}}
    )
    assert r.status_code == 201, r.text
    second = r.json()
    assert (second["version"], second["parent_id"]) == (2, first["id"])
    assert second["hyperparameters"] == {"lr": 2}
    done = plane.wait_job(second["id"])
    assert "learning rate 2" in done["failure_reason"]
    history = plane.api.get(plane.url("/training/jobs"), params={"name": "failing-history"}).json()
    assert [(j["version"], j["hyperparameters"]["lr"]) for j in history] == [(1, 1), (2, 2)]
    assert plane.job(first["id"])["failure_reason"].startswith("exit status 1")
    # A second job with a taken name is refused: versions come from re-runs.
    dup = plane.api.post(
        plane.url("/training/jobs"),
        json={
            "name": "failing-history",
            "algorithm": "script",
            "code_id": first["code_id"],
            "boot_file": "train.py",
            "dataset_id": plane.dataset_id,
            "dataset_version": plane.version,
        },
    )
    assert dup.status_code == 409


def test_bad_requests(plane: Plane) -> None:
    post = plane.api.post
    url = plane.url("/training/jobs")
    base = {"dataset_id": plane.dataset_id, "dataset_version": plane.version}
    assert post(url, json={"name": "x1", "algorithm": "nope", **base}).status_code == 422
    assert post(url, json={"name": "x2", "algorithm": "script", **base}).status_code == 422
    assert post(url, json={"name": "x3", "algorithm": "image_classification"}).status_code == 422
    r = post(
        url,
        json={
            "name": "x4",
            "algorithm": "image_classification",
            "dataset_id": plane.dataset_id,
            "dataset_version": "V999",
        },
    )
    assert r.status_code == 404
    r = post(url, json={"name": "x5", "algorithm": "tabular_classification", "data_path": "/etc"})
    assert r.status_code == 422
    code = plane.upload_code({"a.py": "print(1)\n"})
    r = post(
        url,
        json={
            "name": "x6",
            "algorithm": "script",
            "code_id": code,
            "boot_file": "missing.py",
            **base,
        },
    )
    assert r.status_code == 422
    assert plane.api.get(plane.url("/training/jobs/nope")).status_code == 404


def test_restart_marks_orphans_failed_and_ends_them(plane: Plane) -> None:
    """A job left 'running' by a control plane that died: its process is ended, it fails."""
    ctx = plane.ctx
    job_id = "orphan0000000001"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, ENV_MARKER: job_id},
        start_new_session=True,
    )
    try:
        with ctx.sessions() as session:
            session.add(
                TrainingJob(
                    id=job_id,
                    name="orphan",
                    version=1,
                    algorithm="script",
                    framework="tensorflow",
                    hyperparameters={},
                    timeout_s=60,
                    state="running",
                    pid=proc.pid,
                )
            )
            session.commit()
        JobRunner(ctx).recover()  # what a restarted control plane does first
        assert proc.wait(timeout=10) == -signal.SIGKILL
        job = plane.job(job_id)
        assert job["state"] == "failed"
        assert "restarted" in job["failure_reason"]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_algorithms_listed(plane: Plane) -> None:
    algos = {a["name"]: a for a in plane.api.get(plane.url("/training/algorithms")).json()}
    assert set(algos) == {"image_classification", "tabular_classification"}
    assert algos["image_classification"]["defaults"]["epochs"] > 0


def test_tabular_classification(plane: Plane, tmp_path: Path) -> None:
    """Two Gaussian blobs in a CSV under an allowed root train to a good validation accuracy."""
    import numpy as np

    rng = np.random.default_rng(0)
    table = plane.tmp / "tabular"
    table.mkdir(exist_ok=True)
    rows = ["a,b,c,label"]
    for i in range(200):
        cls = i % 2
        a, b, c = rng.normal(loc=2.0 * cls, scale=0.7, size=3)
        rows.append(f"{a:.4f},{b:.4f},{c:.4f},{'yes' if cls else 'no'}")
    (table / "data.csv").write_text("\n".join(rows) + "\n")
    r = plane.api.post(
        plane.url("/training/jobs"),
        json={
            "name": "tabular",
            "algorithm": "tabular_classification",
            "data_path": str(table),
            "hyperparameters": {"epochs": 15},
        },
    )
    assert r.status_code == 201, r.text
    done = plane.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done["log_tail"]
    m = done["metrics"]
    assert m["accuracy"] >= 0.85 and set(m["per_class"]) == {"no", "yes"}
    assert len(m["confusion_matrix"]["matrix"]) == 2


def test_relative_training_root_gives_jobs_absolute_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job runs in its own folder, so its --train_url must not be relative to the server's
    working directory (the default data_dir, ``var/control-plane``, is relative)."""
    from control_plane.training.runner import JobFolders

    monkeypatch.chdir(tmp_path)
    folders = JobFolders(Path("var/control-plane/training"))
    expected = tmp_path / "var/control-plane/training/jobs/j1/output"
    assert folders.output_dir("j1").is_absolute()
    assert folders.output_dir("j1") == expected
    assert folders.code_dir("c1") == tmp_path / "var/control-plane/training/code/c1"
