"""A short run of ``scripts/fleet-soak``: every fault kind, then every invariant, in under 2 min.

The soak runs as the operator runs it, as a process (it starts Mosquitto, ``control-plane serve``,
three ``edge-agent run`` processes and a flooding device of its own), with a fixed seed so the
same faults are drawn every time: 45 s of faults, then the settle period and the checks. Its
``--json`` report says which faults it injected and how each invariant fared; its exit code is 0
only when all of them held.

The seed draws one broker restart and one control-plane kill apart from each other. "Telemetry
exactly once" also holds when the broker delivers a device's batches out of order after the control
plane resumes with a backlog, which longer soaks caught before telemetry was stored by (device,
sequence number) (docs/fleet.md, "Soak").

The soak is started in its own session so that, should it hang past the timeout, SIGTERM lets it
stop its children itself and, failing that, its whole process group (ours alone) is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "scripts" / "fleet_soak.py"
FAULTS = ("broker_restart", "cp_kill", "agent_kill", "flood", "supersede")
#: Setup ~10 s, faults 45 s, settle and checks ~10 s on the 2-CPU development machine.
RUN_TIMEOUT_S = 170


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_short_soak_injects_every_fault_and_holds_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    out = tmp_path / "soak.log"
    cmd = [
        sys.executable,
        str(SOAK),
        "--minutes=0.75",
        "--agents=3",
        "--seed=20240601",
        "--settle=60",
        f"--json={report}",
    ]
    t0 = time.monotonic()
    with open(out, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the soak stops everything it started
            try:
                proc.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: the soak and its children
                proc.wait(10)
            pytest.fail(f"soak did not finish in {RUN_TIMEOUT_S} s:\n{out.read_text()[-6000:]}")
    elapsed = time.monotonic() - t0
    text = out.read_text()
    print(f"\nsoak finished in {elapsed:.0f} s\n{text[text.find('=== fleet soak report') :]}")
    assert report.exists(), text[-6000:]
    result = json.loads(report.read_text())
    failed = [i for i in result["invariants"] if not i["ok"]]
    assert rc == 0 and result["ok"] and not failed, (rc, failed, text[-6000:])
    missing = [k for k in FAULTS if result["faults"].get(k, 0) < 1]
    assert not missing, f"faults never injected: {missing}; {result['faults']}"
    names = {i["name"] for i in result["invariants"]}
    assert names == {
        "versions",
        "deployments final",
        "telemetry exactly once",
        "oversized telemetry refused",
        "processes",
    }
    assert result["flood"]["requests_sent"] > 0
    assert result["flood"]["telemetry_batches_sent"] > 0
