"""The demo of the whole flow, on embedded defaults. Run it with ``./scripts/demo``.

Steps: generate a small real model (ONNX + TFLite of the same MLP), build a signed two-variant
package, start an edge agent, install the package over the agent's gRPC API, call it with the
stock ``tritonclient``, hot-swap to a second version, run a batch job over .npy files, print
everything, and stop the agent cleanly. Then the fleet (steps 10-14, ``scripts/demo_fleet.py``):
``control-plane serve`` with its embedded MQTT broker, a device registered through the Python
SDK (every control-plane call of steps 10-23 goes through ``edge_inference_sdk``), its agent
started from the config bundle, the same signed package deployed to it over MQTT, the model called
on the device. Then the AI flow (steps 15-20, ``scripts/demo_flow.py``): a digits dataset imported,
labelled and published as V001, the built-in classifier trained on it as a worker process,
registered, converted and signed, deployed to the device, the device's accuracy on the validation
split, and the same model as an online service (two agent replicas run by the control plane)
called through the control plane's OIP REST proxy with curl and tritonclient.http, and a batch
service over the validation split with its evaluation. Then an edge service rolls the package's
version 2 out to the device, canary first, through its health gates (step 21,
``scripts/demo_edge.py``). Finally the device's reported state, and everything stopped (22-23),
or, with ``--keep``, the control plane and the device's agent left running and the dashboard's
URL and the admin's one-time password printed (23). Everything lives in ``.demo/`` and nothing is
downloaded; ``--no-fleet`` stops after step 9, ``--no-training`` skips steps 15-20.
``--flywheel`` adds one turn of the data flywheel after step 20 (F1-F5,
``scripts/demo_flywheel.py``): an edge service capturing what the trained model is unsure of,
digits of another style shown to the device, an automatic review from their true labels,
one improvement (publish, retrain, register, canary), and the accuracy before and after.

This process talks to the agent only over the network, as a user's application would: it imports
tritonclient, never the agent's inference code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo_fleet import run_fleet_demo, step  # noqa: E402
from script_support import console_script, spawn_logged, stop_process, wait_port_file  # noqa: E402

from model_packager.build import ArtifactInput, BuildSpec, build_package  # noqa: E402
from model_packager.signing import generate_keypair, load_private_key  # noqa: E402
from protos.gen import agent_pb2, agent_pb2_grpc  # noqa: E402

DEMO = REPO / ".demo"


def make_models(models: Path) -> None:
    step("1. Generate models (ONNX with onnx.helper, TFLite through the TFLite converter)")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_test_models.py"), "--out", str(models)],
        check=True,
    )


def make_packages(models: Path, work: Path) -> tuple[Path, Path, Path]:
    step("2. Build and sign packages (v1: onnx + tflite variants, v2: new weights)")
    keys = work / "keys"
    kid = generate_keypair(keys / "signing.key", keys / "signing.pub")
    print(f"signing key {kid}")
    key = load_private_key(keys / "signing.key")
    v1 = build_package(
        BuildSpec(
            name="digits-mlp",
            version="1",
            artifacts=[ArtifactInput(models / "mlp.onnx"), ArtifactInput(models / "mlp.tflite")],
            labels=[str(i) for i in range(10)],
            description="MLP 784-256-10 (demo weights)",
        ),
        work / "packages",
        key,
        progress=lambda m: print(f"  - {m}"),
    )
    v2 = build_package(
        BuildSpec(
            name="digits-mlp", version="2", artifacts=[ArtifactInput(models / "mlp_v2.onnx")]
        ),
        work / "packages",
        key,
    )
    subprocess.run([*console_script("model-packager"), "inspect", str(v1)], check=True)
    subprocess.run(
        [
            *console_script("model-packager"),
            "verify",
            str(v1),
            "--trusted",
            str(keys / "signing.pub"),
        ],
        check=True,
    )
    return v1, v2, keys / "signing.pub"


def start_agent(work: Path, trusted: Path) -> tuple[subprocess.Popen[bytes], int]:
    step("3. Start the edge agent (gRPC on a free port, metrics on another)")
    config = work / "agent.yaml"
    ports = work / "agent-ports.json"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "demo-device",
                "data_dir": str(work / "agent-data"),
                "grpc_port": 0,
                "http_port": 0,
                "metrics_port": 0,
                "port_file": str(ports),
                "trusted_keys": [str(trusted)],
                "models": {"digits-mlp": {"max_batch_size": 16}},
            }
        )
    )
    log = work / "agent.log"
    proc = spawn_logged([*console_script("edge-agent"), "run", "--config", str(config)], log)
    try:
        info = wait_port_file(ports, proc, "the agent", 30)
    except (RuntimeError, TimeoutError) as exc:
        stop_process(proc)
        raise SystemExit(f"demo: {exc}; see {log}") from None
    print(
        f"agent pid {proc.pid}: gRPC {info['grpc']}, metrics http://127.0.0.1:{info['metrics']}/metrics"
    )
    return proc, int(info["grpc"])


def install(stub: agent_pb2_grpc.AgentServiceStub, pkg: Path) -> None:
    resp = stub.InstallPackage(agent_pb2.InstallPackageRequest(path=str(pkg)), timeout=120)
    r, m = resp.result, resp.model
    print(f"installed {r.name}:{r.version} -> {r.outcome}, variant {m.variant}")
    print(f"  package digest {r.package_digest}")


def infer(client: triton.InferenceServerClient, x: np.ndarray, version: str = "") -> np.ndarray:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("digits-mlp", [inp], model_version=version)
    return res.as_numpy("logits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the control plane and the device's agent running at the end and print the "
        "dashboard's URL and the admin's one-time password",
    )
    parser.add_argument("--no-fleet", action="store_true", help="skip the control plane steps")
    parser.add_argument("--no-training", action="store_true", help="skip data, training, registry")
    parser.add_argument(
        "--flywheel",
        action="store_true",
        help="after step 20, one turn of the data flywheel: captures from the device, an "
        "automatic review from the true labels, retrain, canary, accuracy before and after",
    )
    args = parser.parse_args()
    if args.flywheel and (args.no_fleet or args.no_training):
        parser.error("--flywheel needs the control plane and training steps")
    started = time.monotonic()
    shutil.rmtree(DEMO / "run", ignore_errors=True)
    work = DEMO / "run"
    work.mkdir(parents=True)
    models = DEMO / "models"
    make_models(models)
    v1, v2, trusted = make_packages(models, work)
    proc, port = start_agent(work, trusted)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        step("4. Install v1 over gRPC: verify, stage, load, self-test, activate, commit")
        install(stub, v1)

        step("5. Call it with the stock tritonclient (Open Inference Protocol v2)")
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        md = client.get_server_metadata()
        live, ready = client.is_server_live(), client.is_server_ready()
        print(f"server {md.name} {md.version}, live={live}, ready={ready}")
        mmd = client.get_model_metadata("digits-mlp")
        print(f"model {mmd.name} versions {list(mmd.versions)} platform {mmd.platform}")
        x = np.random.default_rng(7).standard_normal((4, 784)).astype(np.float32)
        got = infer(client, x)
        want = ort.InferenceSession(str(models / "mlp.onnx")).run(None, {"input": x})[0]
        print(f"predicted classes {got.argmax(1).tolist()}")
        print(f"max |agent - onnxruntime in-process| = {np.abs(got - want).max():.2e}")

        step("6. Hot swap to v2 (requests without a version follow the active one)")
        install(stub, v2)
        got2 = infer(client, x)
        print(
            f"v2 predicted {got2.argmax(1).tolist()}; v1 still served by explicit version: "
            f"{np.allclose(infer(client, x, '1'), got)}"
        )

        step("7. Batch job over .npy files on the device")
        inputs = work / "batch-inputs"
        inputs.mkdir()
        for i in range(20):
            np.save(
                inputs / f"sample-{i:03d}.npy",
                np.random.default_rng(i).standard_normal((1, 784)).astype(np.float32),
            )
        job = stub.SubmitBatchJob(
            agent_pb2.SubmitBatchJobRequest(model_name="digits-mlp", input_dir=str(inputs))
        )
        while job.state not in ("SUCCEEDED", "FAILED", "CANCELED"):
            time.sleep(0.1)
            job = stub.GetBatchJob(agent_pb2.GetBatchJobRequest(job_id=job.job_id))
        lines = [json.loads(ln) for ln in Path(job.results_path).read_text().splitlines()]
        classes = [int(np.argmax(ln["outputs"]["logits"]["data"])) for ln in lines]
        print(f"job {job.job_id}: {job.state}, {job.done}/{job.total} done, {job.failed} failed")
        print(f"results {job.results_path}\nfirst classes {classes[:10]}")

        step("8. Agent status")
        st = stub.GetStatus(agent_pb2.GetStatusRequest())
        for m in st.models:
            for v in m.versions:
                print(f"{m.name}:{v.version} {v.state} variant={v.variant} active={v.active}")
        li = st.last_install
        print(f"last install: {li.name}:{li.version} {li.outcome}")
    finally:
        step("9. Stop the agent (SIGTERM, graceful)")
        print(f"agent exited with {stop_process(proc, 20)}")
    if not args.no_fleet:
        run_fleet_demo(
            work / "fleet",
            v1,
            trusted,
            models,
            ai_flow=not args.no_training,
            keep=args.keep,
            update=v2,
            flywheel=args.flywheel,
        )
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s: everything is in .demo/run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
