"""Training on Ray (``training.executor = "ray"``) against a real Ray head started here.

One module-scoped cluster (``ray start --head --block`` on loopback, 2 CPUs, in a temp folder;
stopped by its process group at the end) and one control plane whose runner sends jobs to it.
The jobs are the same commands a local worker runs: the built-in tabular classifier on a
generated table, and the plain sleeper script for cancel and restart. Ray and the job processes
share this machine's filesystem, as a real deployment shares the training folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
from fastapi.testclient import TestClient

from control_plane.core.context import AppContext
from control_plane.training.models import TrainingJob
from control_plane.training.ray_executor import actor_name
from control_plane.training.runner import JobRunner, _marked
from control_plane.training.runtime import runtime_for
from tests.datasets.conftest import API_TOKEN, brokerless_app, make_settings
from tests.training.conftest import SCRIPTS, Plane

NAMESPACE = "edge-training-test"


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on loopback, its own process group, so every Ray process ends with it."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    proc = subprocess.Popen(
        [
            _ray_cli(),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "ray start exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "the Ray head never listened"
            time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["rm", "-rf", temp], check=False)


@pytest.fixture(scope="module")
def rplane(ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("ray-training")
    settings = make_settings(
        tmp,
        dev_mode=True,
        dataset_import_roots=[tmp],
        training_max_concurrent=2,
        training_executor="ray",
        training_ray_address=ray_head,
        training_ray_namespace=NAMESPACE,
        training_ray_num_cpus=1,
    )
    app, ctx = brokerless_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    runtime = runtime_for(app)
    try:
        yield Plane(api, ctx, runtime, tmp, "", "", "")
    finally:
        runtime.stop()  # on Ray this leaves jobs running: end what a failed test left behind
        for pids in (runtime.runner.root / "jobs").glob("*/output/pids.txt"):
            job_id = pids.parent.parent.name
            for pid in pids.read_text().split():
                if _marked(int(pid), job_id):
                    os.kill(int(pid), signal.SIGKILL)
        ctx.close()
        if ray.is_initialized():
            ray.shutdown()


def test_unreachable_cluster_keeps_jobs_queued(tmp_path: Path) -> None:
    """No Ray at the address: the control plane starts and serves anyway; jobs wait, queued.
    (First in the module: nothing has joined a cluster in this process yet.)"""
    assert not ray.is_initialized()
    settings = make_settings(
        tmp_path,
        dev_mode=True,
        training_executor="ray",
        training_ray_address=f"127.0.0.1:{_free_port()}",  # nothing listens there
    )
    app, ctx = brokerless_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    runtime = runtime_for(app)
    try:
        plane = Plane(api, ctx, runtime, tmp_path, "", "", "")
        job_id = _sleeper(plane, "no-cluster")
        time.sleep(2)  # several ticks
        assert plane.job(job_id)["state"] == "queued"
        assert not ray.is_initialized()
        r = api.post(plane.url(f"/training/jobs/{job_id}/cancel"))
        assert (r.status_code, r.json()["state"]) == (200, "canceled")
    finally:
        runtime.stop()
        ctx.close()


def _actor_exists(job_id: str) -> bool:
    try:
        ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _sleeper(
    plane: Plane, name: str, resources: dict[str, float] | None = None, **hp: float
) -> str:
    code_id = plane.upload_code({"train.py": (SCRIPTS / "sleeper.py").read_text()})
    data = plane.tmp / "empty"
    data.mkdir(exist_ok=True)
    r = plane.api.post(
        plane.url("/training/jobs"),
        json={
            "name": name,
            "algorithm": "script",
            "framework": "tensorflow",
            "code_id": code_id,
            "boot_file": "train.py",
            "data_path": str(data),
            "hyperparameters": hp,
            "resources": resources,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _pids(plane: Plane, job_id: str, timeout: float = 120) -> tuple[int, int]:
    path = plane.runtime.runner.output_dir(job_id) / "pids.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("\n"):
            leader, child = path.read_text().split()
            return int(leader), int(child)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never wrote its pids: {plane.job(job_id)}")


def test_builtin_job_runs_on_ray(rplane: Plane) -> None:
    """A three-class table through the built-in classifier: metrics, scalars, logs, state."""
    import numpy as np

    rng = np.random.default_rng(0)
    names = ("setosa", "versicolor", "virginica")
    table = rplane.tmp / "table"
    table.mkdir()
    rows = ["a,b,c,d,label"]
    for i in range(150):
        cls = i % 3
        rows.append(
            ",".join(f"{v:.3f}" for v in rng.normal(loc=2.5 * cls, scale=0.6, size=4))
            + f",{names[cls]}"
        )
    (table / "table.csv").write_text("\n".join(rows) + "\n")
    r = rplane.api.post(
        rplane.url("/training/jobs"),
        json={
            "name": "table-on-ray",
            "algorithm": "tabular_classification",
            "data_path": str(table),
            "hyperparameters": {"epochs": 40},
        },
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    done = rplane.wait_job(job_id, timeout=300)
    assert done["state"] == "succeeded", done["log_tail"]
    assert done["exit_code"] == 0 and done["failure_reason"] == ""
    assert done["metrics"]["accuracy"] >= 0.8
    assert set(done["metrics"]["per_class"]) == set(names)
    assert done["peak_rss_bytes"] > 0 and done["cpu_seconds"] > 0
    log = rplane.api.get(rplane.url(f"/training/jobs/{job_id}/logs")).text
    assert "tabular_classification" in log and "validation accuracy" in log
    scalars = rplane.api.get(rplane.url(f"/training/jobs/{job_id}/scalars")).json()
    assert scalars["runs"], scalars
    # The job's model was written where --train_url pointed, and its actor is released.
    assert any(rplane.runtime.runner.output_dir(job_id).iterdir())
    assert not _actor_exists(job_id)


def test_cancel_ends_the_process_group_on_ray(
    rplane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A control-plane setting in the environment (read at start, so harmless here) must not
    # travel to the cluster with the job.
    monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", "not-for-the-cluster")
    job_id = _sleeper(rplane, "ray-cancel")
    leader, child = _pids(rplane, job_id)
    environ = Path(f"/proc/{leader}/environ").read_bytes().split(b"\0")
    assert f"EDGE_TRAINING_JOB_ID={job_id}".encode() in environ
    assert not any(v.startswith(b"CONTROL_PLANE_") for v in environ)
    assert rplane.job(job_id)["state"] == "running"
    assert _actor_exists(job_id)
    r = rplane.api.post(rplane.url(f"/training/jobs/{job_id}/cancel"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "canceled"
    assert r.json()["failure_reason"] == "canceled by request"
    assert _gone(leader) and _gone(child)
    assert not _actor_exists(job_id)
    log = rplane.api.get(rplane.url(f"/training/jobs/{job_id}/logs")).text
    assert "tick 0" in log


def test_restart_finds_ray_jobs_again_or_fails_them(rplane: Plane, ray_head: str) -> None:
    """A stopped control plane leaves its Ray jobs running; the next one supervises them to the
    end, and fails (with the reason) a job whose actor vanished meanwhile."""
    kept = _sleeper(rplane, "ray-kept", ticks=40, interval=0.25)
    lost = _sleeper(rplane, "ray-lost")
    _pids(rplane, kept)
    lost_pids = _pids(rplane, lost)
    rplane.runtime.runner.stop()  # the control plane goes away; Ray keeps the jobs
    assert rplane.job(kept)["state"] == "running" and rplane.job(lost)["state"] == "running"

    # Meanwhile the second job's actor is killed outright: the kernel ends the job's leader
    # with it (PR_SET_PDEATHSIG); the helper the script started itself is ours to end.
    ray.init(address=ray_head, namespace=NAMESPACE, log_to_driver=False)
    ray.kill(ray.get_actor(actor_name(lost), namespace=NAMESPACE))
    ray.shutdown()
    deadline = time.monotonic() + 30
    while not _gone(lost_pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(lost_pids[0])
    os.kill(lost_pids[1], signal.SIGKILL)

    runner = JobRunner(rplane.ctx)
    rplane.runtime.runner = runner  # the fixture stops the new one
    runner.start()
    failed = rplane.job(lost)
    assert failed["state"] == "failed"
    assert failed["failure_reason"] == (
        "the control plane restarted while the job ran and its Ray actor is gone"
    )
    assert rplane.job(kept)["state"] == "running"
    done = rplane.wait_job(kept, timeout=120)
    assert done["state"] == "succeeded", done
    assert done["exit_code"] == 0 and "done" in done["log_tail"]
    assert not _actor_exists(kept)


def test_resource_request_holds_a_job_until_canceled(rplane: Plane) -> None:
    """A job asking for a GPU the cluster lacks waits unplaced (running, no pid); cancel ends it
    at once and releases its actor."""
    executor = rplane.runtime.runner.executor
    assert executor is not None
    plain = executor.settings
    executor.settings = plain.model_copy(update={"ray_num_gpus": 1})
    try:
        job_id = _sleeper(rplane, "ray-gpu")
        deadline = time.monotonic() + 30
        while not _actor_exists(job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _actor_exists(job_id), rplane.job(job_id)
    finally:
        executor.settings = plain
    time.sleep(3)  # several ticks: still not placed
    with rplane.ctx.sessions() as session:
        row = session.get(TrainingJob, job_id)
        assert row is not None and row.state == "running" and row.pid is None
    assert not (rplane.runtime.runner.output_dir(job_id) / "pids.txt").exists()
    r = rplane.api.post(rplane.url(f"/training/jobs/{job_id}/cancel"))
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["failure_reason"]) == ("canceled", "canceled by request")
    assert not _actor_exists(job_id)


def _reserved(resource: str) -> float:
    return float(
        ray.cluster_resources().get(resource, 0) - ray.available_resources().get(resource, 0)
    )


def test_per_job_resources_override_the_settings(rplane: Plane) -> None:
    """A job's own ``resources`` are what its actor asks Ray for: 3 CPUs on a 2-CPU cluster
    wait unplaced; half a CPU and 64 MiB are placed and reserved exactly; bad requests are 422."""
    for bad in ({"cpus": -1}, {"tpus": 1}, {"memory_mb": 0}):
        r = rplane.api.post(
            rplane.url("/training/jobs"),
            json={"name": "bad-resources", "algorithm": "script", "resources": bad},
        )
        assert r.status_code == 422, (bad, r.text)
    big = _sleeper(rplane, "ray-3-cpus", resources={"cpus": 3})
    small = _sleeper(rplane, "ray-half-cpu", resources={"cpus": 0.5, "memory_mb": 64})
    assert rplane.job(big)["resources"] == {"cpus": 3.0}
    assert rplane.job(small)["resources"] == {"cpus": 0.5, "memory_mb": 64}
    _pids(rplane, small)  # placed and started

    def reserved() -> tuple[float, float]:
        return _reserved("CPU"), _reserved("memory")

    deadline = time.monotonic() + 30
    while reserved() != (0.5, 64 << 20) and time.monotonic() < deadline:
        time.sleep(0.2)  # the cluster's view of free resources follows within moments
    assert reserved() == (0.5, 64 << 20)  # the small job's request; the big one holds nothing
    with rplane.ctx.sessions() as session:
        row = session.get(TrainingJob, big)
        assert row is not None and row.state == "running" and row.pid is None
    rerun = rplane.api.post(rplane.url(f"/training/jobs/{small}/versions"), json={})
    assert rerun.status_code == 201 and rerun.json()["resources"] == {"cpus": 0.5, "memory_mb": 64}
    for job_id in (big, small, rerun.json()["id"]):
        r = rplane.api.post(rplane.url(f"/training/jobs/{job_id}/cancel"))
        assert r.status_code == 200, r.text
        assert not _actor_exists(job_id)


def test_survivor_ends_a_dead_replicas_ray_job(rplane: Plane) -> None:
    """A replica whose heartbeat stopped left a job running on Ray: another replica's runner
    marks it failed and ends it there (process group and actor)."""
    job_id = _sleeper(rplane, "ray-dead-replica")
    leader, child = _pids(rplane, job_id)
    rplane.runtime.runner.stop()  # leaves the job running on Ray
    with rplane.ctx.sessions() as session:
        row = session.get(TrainingJob, job_id)
        assert row is not None
        row.replica = "gone"  # as if replica "gone" had claimed it, then died (no heartbeat row)
        session.commit()
    survivor_settings = rplane.ctx.settings.model_copy(
        update={
            "replicas": rplane.ctx.settings.replicas.model_copy(update={"id": "b"}),
            "mqtt": rplane.ctx.settings.mqtt.model_copy(update={"url": "mqtt://127.0.0.1:1"}),
        }
    )
    survivor = JobRunner(AppContext.from_settings(survivor_settings))
    try:
        survivor.start()  # its own thread ticks: the replica duties run on the first tick
        done = rplane.wait_job(job_id, timeout=60)
    finally:
        survivor.stop()
        survivor.ctx.close()
    assert done["state"] == "failed"
    assert done["failure_reason"] == "replica gone stopped while the job ran (no heartbeat)"
    assert _gone(leader) and _gone(child)
    runner = JobRunner(rplane.ctx)
    rplane.runtime.runner = runner  # the fixture stops it
    runner.start()
    assert not _actor_exists(job_id)
