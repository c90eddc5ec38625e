"""Benchmark: notebooks and the SDK, each figure next to a baseline measured in the same run.

- **Start to kernel ready**: ``POST /notebooks`` until a kernel created through the proxy has
  answered an execute request over the proxied websocket, vs the same JupyterLab command started
  directly (no control plane, no proxy) until its kernel answers. Runs alternate.
- **Export to job submitted**: ``POST /notebooks/{id}/export`` of the shipped tabular example
  then ``POST /training/jobs`` (201), vs nbconvert's ``PythonExporter`` alone on the same file in
  this process. Each job is canceled at once so training does not load the machine.
- **Upload**: ``Client.training.upload_code`` of a zip of ``--upload-mb`` MB (random bytes,
  stored) vs ``curl -F`` of an equal zip to the same route; every upload is a distinct zip so
  both sides pay the same extraction; who goes first alternates, and ``os.sync()`` runs before
  each upload. Target: SDK >= 0.8x curl's throughput.

The control plane runs as ``control-plane serve`` (a child process, dev mode, its own data
folder). Medians over ``--runs``; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from script_support import console_script, free_port, spawn_logged, stop_process, wait_until  # noqa: E402

from edge_inference_sdk import Client  # noqa: E402

TOKEN = "bench-notebooks-token-0123456789"
EXAMPLE = REPO / "control_plane" / "notebooks" / "examples" / "tabular_classifier.ipynb"


def execute(ws_url: str, headers: dict[str, str], code: str = "1 + 1") -> None:
    """One execute request on a kernel's channels websocket, until its reply."""
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "username": "bench", "session": session,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "allow_stdin": False},
    }  # fmt: skip
    with connect(f"{ws_url}?session_id={session}", additional_headers=headers, proxy=None) as ws:
        ws.send(json.dumps(request))
        while True:
            msg = json.loads(ws.recv(timeout=120))
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "execute_reply"
            ):
                return


def start_via_control_plane(url: str, n: int) -> float:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        t0 = time.perf_counter()
        nb = http.post("/api/v1/notebooks", json={"name": f"bench-start-{n}"}).json()
        wait_until(
            "notebook running",
            lambda: http.get(f"/api/v1/notebooks/{nb['id']}").json()["state"] == "running",
            180,
            0.05,
        )
        kernel = http.post(f"/notebooks/{nb['id']}/api/kernels", json={"name": "python3"}).json()
        ws = f"ws://{url.removeprefix('http://')}/notebooks/{nb['id']}/api/kernels/{kernel['id']}"
        execute(f"{ws}/channels", headers)
        elapsed = time.perf_counter() - t0
        http.delete(f"/api/v1/notebooks/{nb['id']}")
    return elapsed


def start_direct(tmp: Path, n: int) -> float:
    root = tmp / f"direct-{n}"
    (root / "work").mkdir(parents=True)
    token = uuid.uuid4().hex
    argv = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        f"--ServerApp.root_dir={root / 'work'}", f"--IdentityProvider.token={token}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "IPYTHONDIR": str(root / "ipython"),
    }
    headers = {"Authorization": f"token {token}"}
    t0 = time.perf_counter()
    with open(root / "log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        # The port the OS gave it, from its runtime file (as the control plane reads it).
        runtime = root / "runtime" / f"jpserver-{proc.pid}.json"
        wait_until("jupyterlab runtime file", runtime.exists, 180, 0.05)
        port = wait_until("port", lambda: json.loads(runtime.read_text()).get("port"), 10, 0.05)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120
        ) as http:

            def up() -> bool:
                try:
                    return http.get("/api/status").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until("jupyterlab", up, 180, 0.05)
            kernel = http.post("/api/kernels", json={"name": "python3"}).json()
            execute(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels", headers)
            return time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def export_and_submit(client: Client, nb_id: str, n: int) -> float:
    t0 = time.perf_counter()
    export = client.notebooks.export(nb_id, EXAMPLE.name)
    job = client.training.create_job(
        f"bench-export-{n}", "script", code_id=export.code_id, boot_file=export.boot_file
    )
    elapsed = time.perf_counter() - t0
    client.training.cancel(job.id)
    return elapsed


def nbconvert_alone() -> float:
    import nbformat
    from nbconvert import PythonExporter

    t0 = time.perf_counter()
    PythonExporter().from_notebook_node(nbformat.read(EXAMPLE, as_version=4))
    return time.perf_counter() - t0


def make_zip(path: Path, blob: bytes, n: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("blob.bin", blob)
        zf.writestr("run.txt", f"{n} {uuid.uuid4()}")
    return path


def upload_curl(url: str, path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"Authorization: Bearer {TOKEN}",
         "-F", f"file=@{path};type=application/zip", f"{url}/api/v1/training/code"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def upload_sdk(client: Client, path: Path) -> float:
    t0 = time.perf_counter()
    client.training.upload_code(path)
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--upload-runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
    port = free_port()
    env = {
        **os.environ,
        "CONTROL_PLANE_DEV_MODE": "true",
        "CONTROL_PLANE_API_TOKEN": TOKEN,
        "CONTROL_PLANE_MQTT_PASSWORD": "bench-notebooks-mqtt-0123456789",
        "CONTROL_PLANE_DATA_DIR": str(tmp / "cp"),
        "CONTROL_PLANE_PORT": str(port),
        "CONTROL_PLANE_EMBEDDED_BROKER_PORT": "0",
        "PYTHONPATH": str(REPO),
    }
    server = spawn_logged([*console_script("control-plane"), "serve"], tmp / "cp.log", env=env)
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("control plane", healthy, 120)
        client = Client(url, TOKEN, timeout=600)

        via, direct = [], []
        for n in range(args.runs):
            direct.append(start_direct(tmp, n))
            via.append(start_via_control_plane(url, n))
        results["start_to_kernel_ready_s"] = {"control_plane": summary(via),
                                              "direct_jupyterlab": summary(direct)}  # fmt: skip

        nb = client.notebooks.create("bench-export", example=EXAMPLE.stem)
        client.notebooks.wait_running(nb.id, timeout=180)
        exports, converts = [], []
        for n in range(args.runs):
            converts.append(nbconvert_alone())
            exports.append(export_and_submit(client, nb.id, n))
        client.notebooks.delete(nb.id)
        results["export_to_job_submitted_s"] = {"control_plane": summary(exports),
                                                "nbconvert_alone": summary(converts)}  # fmt: skip

        blob = os.urandom(args.upload_mb * 1_000_000)
        size = args.upload_mb * 1_000_000
        curl_rates, sdk_rates = [], []
        for n in range(args.upload_runs):
            # Alternate who goes first, and flush the previous upload's writes (staging and
            # extraction: 2x the zip) before each, so neither side pays for the other's.
            order = ("curl", "sdk") if n % 2 == 0 else ("sdk", "curl")
            for k, side in enumerate(order):
                archive = make_zip(tmp / f"{side}.zip", blob, 2 * n + k)
                os.sync()
                if side == "curl":
                    curl_rates.append(size / upload_curl(url, archive) / 1e6)
                else:
                    sdk_rates.append(size / upload_sdk(client, archive) / 1e6)
        results["upload_MB_per_s"] = {"sdk": summary(sdk_rates), "curl": summary(curl_rates)}
        client.close()
    finally:
        stop_process(server)
        shutil.rmtree(tmp, ignore_errors=True)
    start = results["start_to_kernel_ready_s"]
    export = results["export_to_job_submitted_s"]
    upload = results["upload_MB_per_s"]
    results["ratios"] = {
        "start_vs_direct": start["control_plane"]["median"] / start["direct_jupyterlab"]["median"],
        "export_vs_nbconvert": export["control_plane"]["median"]
        / export["nbconvert_alone"]["median"],
        "sdk_upload_vs_curl": upload["sdk"]["median"] / upload["curl"]["median"],
    }
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    results["cpus"] = os.cpu_count()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
