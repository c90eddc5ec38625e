"""A batch service on a named device: the job, its input and its rows travel over the fleet channel.

A real Mosquitto (generated config and ACL), the control plane in-process and a real agent
process serving mlp 1. The input is an uploaded zip of a tensor JSONL (one wrong-shaped line) and
two .npy files; the device pulls it in 4 KiB chunks, runs it as its own batch job and sends its
rows back. Every row must match onnxruntime over the same tensors, the bad line must be its own
error row, and the device must delete the job once the control plane holds every row. The agent
is killed with SIGKILL while the job is under way and started again: the job still ends with one
row per input. A job deleted while the device works on it is dropped there.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.control_plane.conftest import wait_for
from tests.fleet.conftest import Fleet

API = "/api/v1"
DEVICE = "cam-batch"


def _inputs(n: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.random((n, 784), dtype=np.float32).round(4)
    lines = [json.dumps({"inputs": {"input": row.tolist()}}) for row in x[:-2]]
    lines.insert(3, json.dumps({"inputs": {"input": [1.0, 2.0, 3.0]}}))  # wrong shape
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("rows.jsonl", "\n".join(lines) + "\n")
        for i in (n - 2, n - 1):
            npy = io.BytesIO()
            np.save(npy, x[i : i + 1])
            zf.writestr(f"x{i}.npy", npy.getvalue())
    return buf.getvalue(), x


def _service(fleet: Fleet) -> dict[str, Any]:
    return dict(fleet.api.get(f"{API}/services/on-device").json())


def test_batch_job_on_a_device(fleet: Fleet, start_fleet_agent: Any, models_dir: Path) -> None:
    bundle = fleet.register(DEVICE)
    agent = start_fleet_agent(bundle).start()
    wait_for(
        lambda: any(
            (m["name"], m["version"]) == ("mlp", "1")
            for m in (fleet.device(DEVICE).get("reported") or {}).get("models", [])
        ),
        timeout=30,
    )
    data, x = _inputs(120)
    r = fleet.api.post(f"{API}/services/inputs", files={"file": ("inputs.zip", data)})
    assert r.status_code == 201, r.text
    upload = r.json()["id"]
    body = {
        "name": "on-device",
        "type": "batch",
        "device": DEVICE,
        "models": [{"model": "mlp", "version": "1"}],
        "input": {"upload": upload},
    }
    for bad, message in [
        ({"device": "nowhere"}, "not registered"),
        ({"models": [{"model": "mlp", "version": "9"}]}, "does not report running mlp version 9"),
        ({"type": "online", "input": None}, "device is for batch services"),
    ]:
        r = fleet.api.post(f"{API}/services", json={**body, **bad})
        assert r.status_code == 422 and message in r.text, r.text

    r = fleet.api.post(f"{API}/services", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["device"] == DEVICE and r.json()["replicas"] == []

    # Kill the agent once the device has taken the job up, then start it again.
    wait_for(lambda: (_service(fleet)["batch"] or {}).get("state"), timeout=30)
    agent.kill()
    agent.start()

    done = wait_for(
        lambda: (s := _service(fleet))["state"] in ("succeeded", "failed") and s, timeout=90
    )
    assert done["state"] == "succeeded", done["reason"]
    assert done["batch"]["total"] == done["batch"]["done"] == 121
    assert done["batch"]["failed"] == 1

    rows = fleet.api.get(f"{API}/services/on-device/results", params={"limit": 1000}).json()
    assert rows["total"] == 121
    items = rows["items"]
    assert [r["index"] for r in items] == list(range(121))
    expected_sources = [f"rows.jsonl#{n}" for n in range(1, 120)] + ["x118.npy", "x119.npy"]
    assert [r["source"] for r in items] == expected_sources
    # The tensors in row order: the JSONL's (with the bad line at index 3), then the .npy files.
    session = ort.InferenceSession(str(models_dir / "mlp.onnx"))
    logits = session.run(None, {"input": x})[0]
    answers = [str(int(np.argmax(v))) for v in logits]
    order = [0, 1, 2, None, *range(3, 118), 118, 119]
    for row, i in zip(items, order, strict=True):
        if i is None:
            assert row["error"] and row["predicted"] is None, row
        else:
            assert row["error"] is None and row["predicted"] == answers[i], (row, i)

    # Done: the job left the device's list and the device deleted its copy.
    batch_dir = agent.workdir / "data" / "fleet" / "batch"
    wait_for(lambda: not [p for p in batch_dir.iterdir() if p.name != "downloads"], timeout=30)

    assert fleet.api.delete(f"{API}/services/on-device").status_code == 204

    # A second job deleted while the device works on it: the device drops it.
    r = fleet.api.post(f"{API}/services", json={**body, "name": "dropped"})
    assert r.status_code == 201, r.text
    wait_for(lambda: [p for p in batch_dir.iterdir() if p.name != "downloads"], timeout=30)
    assert fleet.api.delete(f"{API}/services/dropped").status_code == 204
    wait_for(lambda: not [p for p in batch_dir.iterdir() if p.name != "downloads"], timeout=30)
    assert fleet.api.get(f"{API}/services/dropped").status_code == 404
