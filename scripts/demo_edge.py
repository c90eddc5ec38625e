"""Demo step 21: an edge service rolls a new version out to the device, canary first.

The device runs ``digits-mlp`` 1 (step 13). Version 2 is uploaded and given to an edge service
whose target is the device; the rollout's canary is the device itself (a one-device
fleet), which bakes for a few seconds while requests flow and the health gates (installs, device
online, error rate from its per-version telemetry) decide. The stages, their gates and the
device's answer (the version that replied) are printed. The control-plane calls go through the
Python SDK (``demo.api``); the requests to the device use the stock tritonclient.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from demo_fleet import DEVICE_ID, MODEL, FleetDemo, _wait, step

BAKE_S = 3.0


def _ask(grpc_port: int) -> str:
    """One request without a version; the version that answered."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        x = np.random.default_rng(5).standard_normal((1, 784)).astype(np.float32)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return str(client.infer(MODEL, [inp]).get_response().model_version)
    finally:
        client.close()


def rollout_edge_service(demo: FleetDemo, package: Path, grpc_port: int) -> None:
    step("21. An edge service: digits-mlp 2 rolled out to the device, canary first, with gates")
    pkg = demo.api.packages.upload(package)
    print(f"device answers with version {_ask(grpc_port)} before the rollout")
    t0 = time.monotonic()
    service = demo.api.services.create(
        "digits-edge",
        [{"model": pkg.name, "version": pkg.version}],
        type="edge",
        targets={"device_ids": [DEVICE_ID]},
        strategy={"canary": 1, "waves": ["100%"], "bake_s": BAKE_S},
        gates={"max_error_rate": 0.01},
        guard={"bake_s": 30, "max_error_rate": 0.2, "min_requests": 5},
    )
    if service.rollout is None:
        raise SystemExit("demo: the edge service planned no rollout")
    print(f"edge service {service.name}: rollout {service.rollout['number']} planned:")
    for s in service.rollout["stages"]:
        print(f"  {s['name']}: {', '.join(s['devices'])}")

    def finished() -> dict[str, Any] | None:
        _ask(grpc_port)  # live traffic for the gates (and the device's own guard)
        r = demo.api.services.get("digits-edge").rollout
        return r if r is not None and r["state"] not in ("running", "paused") else None

    rollout = _wait("the rollout to finish", finished, 120, 0.2)
    print(f"rollout {rollout['state']} in {time.monotonic() - t0:.1f} s (bake {BAKE_S:g} s)")
    for s in rollout["stages"]:
        gates = ", ".join(
            f"{g['gate']} {'ok' if g['passed'] else 'FAILED'}"
            + (f" ({g['value']:g}/{g['limit']:g})" if g["limit"] is not None else "")
            for g in s["gates"]
        )
        print(f"  {s['name']}: {s['state']}; previous {s['previous']}; gates: {gates}")
    if rollout["state"] != "succeeded":
        raise SystemExit(f"demo: the rollout ended {rollout['state']}: {rollout['reason']}")
    print(f"device answers with version {_ask(grpc_port)} after the rollout")
    print(f"(a rollback is client.services.rollback('digits-edge'); {DEVICE_ID} still")
    print(" holds version 1, so it would re-activate it without a download)")
