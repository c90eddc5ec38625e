"""Demo steps for the fleet: the control plane with its embedded broker, one device, one deployment.

``run_fleet_demo`` continues the main demo (scripts/demo.py) with what a user does to put a model
on a device through the cloud side, using only the public surfaces, each as a separate process:

1. ``control-plane serve`` with no broker URL, so it runs its embedded MQTT broker on loopback
   (nothing to install), a SQLite file, a generated API token and a generated broker password (so
   it would start outside development mode too) and the demo's signing key as trusted key;
2. ``client.devices.register`` (``POST /devices``) registers a device; its config bundle is
   written to ``bundle.json``;
3. ``edge-agent join bundle.json`` writes the agent's config, ``edge-agent run`` starts it (free
   ports through ``EDGE_AGENT_*`` variables: the joined config is used unmodified);
4. ``client.packages.upload`` uploads the signed package, ``client.deployments.create`` makes it
   the device's desired state, and ``client.deployments.wait`` follows it until the device reports
   INSTALLED;
5. the model is called on the device with the stock tritonclient and compared with onnxruntime
   in this process;
6. the device's reported state is printed from ``client.devices.get``, then the agent and the
   control plane are stopped with SIGTERM, and the device is seen going offline first.

Every control-plane call goes through the Python SDK (``edge_inference_sdk.Client``, see
docs/sdk.md), so these steps are also its worked example. This module never imports the agent's
or the control plane's code: like a user's tools, it talks to them over HTTP (the SDK) and gRPC
(tritonclient) only, which also keeps tritonclient's protobuf registrations apart from the
agent's.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from script_support import (  # noqa: E402
    console_script,
    free_port,
    spawn_logged,
    stop_process,
    wait_port_file,
    wait_until,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_inference_sdk import Client, EdgeInferenceError, Unauthorized, WaitTimeout  # noqa: E402
from edge_inference_sdk.models import DeploymentTarget  # noqa: E402

DEVICE_ID = "demo-edge-1"
MODEL = "digits-mlp"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _wait(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    try:
        return wait_until(what, predicate, timeout, every)
    except TimeoutError:
        raise SystemExit(f"demo: {what} did not happen within {timeout:.0f} s") from None


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without CONTROL_PLANE_* / EDGE_AGENT_* settings a user may have exported
    (a CONTROL_PLANE_MQTT_URL would, for example, turn the embedded broker off)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CONTROL_PLANE_", "EDGE_AGENT_"))
    }
    env.update(extra)
    return env


@dataclass
class FleetDemo:
    work: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    client: Client | None = None
    token: str = ""

    @property
    def api(self) -> Client:
        """The SDK client of the running control plane (set by step 10)."""
        if self.client is None:
            raise RuntimeError("the control plane is not started")
        return self.client

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = spawn_logged(cmd, self.log(name), env=env)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> Path:
        """Where the child ``name`` writes its output (what a failure points at)."""
        return self.work / f"{name}.log"

    def stop(self, name: str, timeout: float = 20) -> int | None:
        """Stop the child ``name``: its exit status, None if it had to be killed or is unknown."""
        for n, proc in self.procs:
            if n == name:
                return stop_process(proc, timeout)
        return None

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def stop_all(self) -> None:
        for name, _ in reversed(self.procs):
            self.stop(name)
        self.close_client()


def start_control_plane(demo: FleetDemo, trusted_pub: Path) -> str:
    step("10. Start the control plane: `control-plane serve`, embedded MQTT broker, SQLite file")
    port = free_port()
    token = secrets.token_urlsafe(24)
    env = _clean_env(
        CONTROL_PLANE_API_TOKEN=token,
        CONTROL_PLANE_MQTT_PASSWORD=secrets.token_urlsafe(24),
        CONTROL_PLANE_DATA_DIR=str(demo.work / "control-plane"),
        CONTROL_PLANE_TRUSTED_KEYS=json.dumps([str(trusted_pub)]),
        CONTROL_PLANE_HOST="127.0.0.1",
        CONTROL_PLANE_PORT=str(port),
        CONTROL_PLANE_EMBEDDED_BROKER_PORT="0",  # any free port: 1883 may be taken
        # The registry signs trained models with the key the device already trusts.
        CONTROL_PLANE_SIGNING_KEY=str(trusted_pub.with_suffix(".key")),
    )
    t0 = time.monotonic()
    proc = demo.spawn("control-plane", [*console_script("control-plane"), "serve"], env)
    base = f"http://127.0.0.1:{port}"
    demo.client = Client(base, token, timeout=120)
    demo.token = token

    def healthy() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"demo: control plane exited; see {demo.log('control-plane')}")
        try:
            return bool(demo.api.health().get("broker_connected"))
        except httpx.HTTPError:  # not listening yet
            return False

    _wait("the control plane answering /health with its broker connected", healthy, 90, 0.2)
    with Client(base, "not-the-token", retries=0) as stranger:
        try:
            stranger.devices.list()
            raise SystemExit("demo: the control plane answered a call with a wrong token")
        except Unauthorized as exc:
            unauth = exc.status
    print(
        f"control plane pid {proc.pid}: REST {base} (OpenAPI docs at {base}/docs), ready in "
        f"{time.monotonic() - t0:.1f} s; a call with a wrong token gets HTTP {unauth}"
    )
    return base


def register_device(demo: FleetDemo) -> Path:
    step("11. Register a device (client.devices.register): credentials + config bundle")
    reg = demo.api.devices.register(name="Demo gateway", device_id=DEVICE_ID)
    bundle = reg.bundle
    path = demo.work / "bundle.json"
    path.write_text(json.dumps(bundle, indent=2))
    path.chmod(0o600)  # it holds the broker password
    mqtt = bundle["mqtt"]
    print(
        f"device {bundle['device_id']}: broker {mqtt['url']}, topics under "
        f"{mqtt['topic_prefix']}/, {len(bundle['trusted_keys_pem'])} trusted key(s); "
        f"bundle written to {path}"
    )
    return path


def start_agent(demo: FleetDemo, bundle: Path) -> int:
    step("12. Start the device's agent from its bundle: `edge-agent join`, then `edge-agent run`")
    config = demo.work / "fleet-agent.yaml"
    subprocess.run(
        [
            *console_script("edge-agent"),
            "join",
            str(bundle),
            "--out",
            str(config),
            "--data-dir",
            str(demo.work / "fleet-agent-data"),
        ],
        check=True,
        env=_clean_env(),
    )
    ports = demo.work / "fleet-agent-ports.json"
    env = _clean_env(
        EDGE_AGENT_GRPC_PORT="0",
        EDGE_AGENT_HTTP_PORT="0",
        EDGE_AGENT_METRICS_PORT="0",
        EDGE_AGENT_PORT_FILE=str(ports),
    )
    proc = demo.spawn(
        "fleet-agent", [*console_script("edge-agent"), "run", "--config", str(config)], env
    )
    try:
        grpc_port = int(wait_port_file(ports, proc, "the agent", 60)["grpc"])
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"demo: {exc}; see {demo.log('fleet-agent')}") from None
    _wait(
        "the device reporting online",
        lambda: demo.api.devices.get(DEVICE_ID).status == "online",
        30,
        0.1,
    )
    print(f"agent pid {proc.pid}: gRPC 127.0.0.1:{grpc_port}, no model yet; API says: online")
    return grpc_port


def deploy(demo: FleetDemo, package: Path) -> None:
    step("13. Upload the signed package (verified on upload) and deploy it to the device")
    pkg = demo.api.packages.upload(package)
    print(
        f"package {pkg.name}:{pkg.version} {pkg.digest[:16]}... ({pkg.size} B, "
        f"{pkg.chunk_count} chunks of {pkg.chunk_size} B, signed by key {pkg.key_id})"
    )
    t0 = time.monotonic()
    dep = demo.api.deployments.create(package_digest=pkg.digest, device_id=DEVICE_ID)
    print(f"deployment {dep.id} created; following it until the device reports a result")
    seen: set[tuple[str, int]] = set()

    def show(t: DeploymentTarget) -> None:
        key = (t.state, t.chunks_done)
        if key not in seen:
            seen.add(key)
            print(
                f"  +{time.monotonic() - t0:4.1f} s  {t.state:<11} step={t.step or '-'} "
                f"chunks {t.chunks_done}/{t.chunks_total}"
            )

    wait_installed(demo, dep.id, "the deployment reaching a final state", 120, 0.1, show)
    print(f"installed on {DEVICE_ID} {time.monotonic() - t0:.1f} s after the deployment call")


def wait_installed(
    demo: FleetDemo,
    deployment_id: str,
    what: str,
    timeout: float,
    every: float,
    on_poll: Callable[[DeploymentTarget], None] | None = None,
) -> DeploymentTarget:
    """Follow a deployment's one target until it is final (``client.deployments.wait``): the
    target once installed; a failed install ends the demo with the step and reason the device
    reported. ``on_poll`` sees every polled target (progress output)."""
    try:
        dep = demo.api.deployments.wait(
            deployment_id,
            timeout=timeout,
            poll_s=every,
            on_poll=None if on_poll is None else lambda d: on_poll(d.targets[0]),
        )
    except WaitTimeout:
        raise SystemExit(f"demo: {what} did not happen within {timeout:.0f} s") from None
    target = dep.targets[0]
    if target.state != "installed":
        raise SystemExit(f"demo: deployment failed at {target.step}: {target.reason}")
    return target


def call_device(grpc_port: int, models: Path) -> None:
    step("14. Call the model on the device with the stock tritonclient")
    import onnxruntime as ort
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    mmd = client.get_model_metadata(MODEL)
    print(f"model {mmd.name} versions {list(mmd.versions)} platform {mmd.platform}")
    x = np.random.default_rng(11).standard_normal((3, 784)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer(MODEL, [inp]).as_numpy("logits")
    want = ort.InferenceSession(str(models / "mlp.onnx")).run(None, {"input": x})[0]
    print(f"predicted classes {got.argmax(1).tolist()}")
    print(f"max |device - onnxruntime in-process| = {np.abs(got - want).max():.2e}")
    client.close()


def print_reported(demo: FleetDemo) -> None:
    step("22. The device as the control plane sees it (client.devices.get)")
    dev = demo.api.devices.get(DEVICE_ID)
    print(f"status {dev.status}, desired generation {dev.desired_generation}")
    print("reported state:")
    print(json.dumps(dev.reported, indent=2))


def stop(demo: FleetDemo) -> None:
    step("23. Stop the agent, then the control plane (SIGTERM, graceful)")
    print(f"agent exited with {demo.stop('fleet-agent')}")
    status = _wait(
        "the device reported offline",
        lambda: (s := demo.api.devices.get(DEVICE_ID).status) != "online" and s,
        15,
        0.1,
    )
    print(f"device status on the API: {status} (the agent said goodbye before it left)")
    demo.close_client()
    code = demo.stop("control-plane")
    clean = "Application shutdown complete" in demo.log("control-plane").read_text()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: the status is then -15.
    print(f"control plane exited with {code} ({'clean shutdown' if clean else 'see its log'})")


def keep_running(demo: FleetDemo, base: str) -> None:
    """``--keep``: leave the control plane and the device's agent running for a person to look at
    what the demo made in the dashboard; print where, how to sign in and how to stop them."""
    step("23. Left running (--keep): the dashboard")
    password_file = demo.work / "control-plane" / "admin-password"
    password = password_file.read_text().strip() if password_file.exists() else "(see its file)"
    pids = {name: proc.pid for name, proc in demo.procs if proc.poll() is None}
    print(f"dashboard     {base}/ui/")
    print("user          admin")
    print(
        f"password      {password}   (one-time: the dashboard asks for a new one; {password_file})"
    )
    print(f"REST API      {base}/docs")
    for name, pid in pids.items():
        print(f"{name:13} pid {pid}, log {demo.log(name)}")
    print(f"stop them with: kill {' '.join(str(p) for p in pids.values())}")
    demo.close_client()
    demo.procs.clear()  # not stopped on the way out


def run_fleet_demo(
    work: Path,
    package: Path,
    trusted_pub: Path,
    models: Path,
    ai_flow: bool = True,
    keep: bool = False,
    update: Path | None = None,
    flywheel: bool = False,
) -> None:
    """Steps 10-23 of the demo (21, an edge service rolling ``update`` out, when it is given;
    F1-F5, one turn of the data flywheel after step 20, with ``flywheel``);
    every child process is stopped whatever happens, unless ``keep`` asks to leave the control
    plane and the agent running once the demo has succeeded."""
    work.mkdir(parents=True, exist_ok=True)
    demo = FleetDemo(work)
    try:
        base = start_control_plane(demo, trusted_pub)
        bundle = register_device(demo)
        grpc_port = start_agent(demo, bundle)
        deploy(demo, package)
        call_device(grpc_port, models)
        if ai_flow:
            from demo_flow import run_ai_flow

            trained = run_ai_flow(demo, base, demo.token, grpc_port)
            if flywheel:
                from demo_flywheel import run_flywheel

                run_flywheel(demo, trained["model"], trained["version"])
        if update is not None:
            from demo_edge import rollout_edge_service

            rollout_edge_service(demo, update, grpc_port)
        print_reported(demo)
        if keep:
            keep_running(demo, base)
        else:
            stop(demo)
    except EdgeInferenceError as exc:  # an API error or an unreachable control plane
        raise SystemExit(f"demo: {exc}") from None
    finally:
        demo.stop_all()
