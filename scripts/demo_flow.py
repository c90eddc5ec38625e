"""Demo steps 15-20: the AI flow end to end on the running control plane and device.

Data (a digits dataset, imported as a zip, labelled, published as V001) -> training (the built-in
image classifier as a worker process) -> registry (conversion to ONNX + TFLite variants, parity
gate, signed package) -> deployment to the device over MQTT -> the device's predictions on the
validation split, sent as PNG bytes that the package's declared preprocessing decodes on the
device, and their accuracy against the labels -> the same model as an online service (two agent
replicas run by the control plane), called over OIP REST through the control plane with curl and
the stock tritonclient.http -> a batch service over the validation split with its evaluation.

The control-plane calls go through the Python SDK (``demo.api``, an
``edge_inference_sdk.Client``); the calls to the device and to the service's OIP endpoint use curl
and tritonclient on purpose, as an application serving requests would.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from demo_datasets import run_datasets_demo  # noqa: E402
from demo_fleet import DEVICE_ID, FleetDemo, step, wait_installed  # noqa: E402
from demo_training import run_training_demo  # noqa: E402

from edge_inference_sdk import WaitTimeout  # noqa: E402


def deploy_digest(demo: FleetDemo, digest: str) -> None:
    t0 = time.monotonic()
    dep = demo.api.deployments.create(package_digest=digest, device_id=DEVICE_ID)
    what = "the trained model's deployment reaching a final state"
    wait_installed(demo, dep.id, what, 300, 0.2)
    print(f"deployment {dep.id}: installed on {DEVICE_ID} in {time.monotonic() - t0:.1f} s")


def predict_validation(grpc_port: int, model: str, data_url: str) -> float:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    md = client.get_model_metadata(model)
    inp_name, out_name = md.inputs[0].name, md.outputs[0].name
    print(f"model {md.name} versions {list(md.versions)}: input {inp_name}, output {out_name}")
    folder = Path(data_url)
    entries = [json.loads(ln) for ln in (folder / "manifest.jsonl").read_text().splitlines() if ln]
    val = [e for e in entries if e["usage"] == "EVAL"]
    labels = [e["annotation"][0]["name"] for e in val]
    images = [(folder / e["source"]).read_bytes() for e in val]
    predicted: list[str] = []
    for start in range(0, len(images), 16):
        chunk = np.array(images[start : start + 16], dtype=np.object_)
        tensor = triton.InferInput(inp_name, [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(chunk)
        scores = client.infer(model, [tensor]).as_numpy(out_name)
        predicted += [str(i) for i in scores.argmax(axis=1)]
    client.close()
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    print(f"validation split: {len(val)} images sent as PNG bytes (decoded on the device)")
    print(f"first predictions {predicted[:12]}")
    print(f"first labels      {labels[:12]}")
    print(f"device accuracy on the validation split: {accuracy:.3f}")
    return accuracy


def validation_split(data_url: str) -> tuple[list[bytes], list[str]]:
    """The PNG bytes and labels of a published version's validation split."""
    folder = Path(data_url)
    entries = [json.loads(ln) for ln in (folder / "manifest.jsonl").read_text().splitlines() if ln]
    val = [e for e in entries if e["usage"] == "EVAL"]
    return [(folder / e["source"]).read_bytes() for e in val], [
        e["annotation"][0]["name"] for e in val
    ]


def serve_online(
    demo: FleetDemo, base_url: str, token: str, model: str, version: str, data_url: str
) -> float:
    """The model as an online service; curl one image, tritonclient.http the validation split."""
    import tritonclient.http as httpclient

    t0 = time.monotonic()
    demo.api.services.create("digits", [{"model": model, "version": version}], replicas=2)
    try:
        service = demo.api.services.wait("digits", ("running", "failed"), 300, poll_s=0.5)
    except WaitTimeout:
        service = demo.api.services.get("digits")
    if service.state != "running":
        raise SystemExit(f"demo: service not running: {service.state} {service.reason}")
    pids = [r.pid for r in service.replicas]
    print(f"service digits running in {time.monotonic() - t0:.1f} s: replicas (pids) {pids}")
    print(f"gRPC replicas: {service.grpc_addresses}")
    url = f"{base_url}/api/v1/services/digits/v2/models/{model}/infer"
    images, labels = validation_split(data_url)
    png = demo.work / "digit.png"
    png.write_bytes(images[0])
    curl = ["curl", "-sS", "-H", f"Authorization: Bearer {token}", "-F", f"file=@{png}", url]
    shown = shlex.join(curl).replace(token, "$TOKEN")
    if shutil.which("curl"):  # a system package of scripts/setup and CI
        print(f"$ {shown}")
        out = subprocess.run(curl, capture_output=True, text=True, timeout=60, check=True).stdout
        outputs = json.loads(out)["outputs"]
        topk = [o for o in outputs if o["name"].endswith("_topk")]
        answer = topk[0]["data"] if topk else f"argmax {int(np.argmax(outputs[0]['data']))}"
        print(f"image labelled {labels[0]}: the service answers {answer}")
    else:
        print(f"(curl not installed: skipped) {shown}")

    client = httpclient.InferenceServerClient(
        base_url.split("://", 1)[1] + "/api/v1/services/digits"
    )
    auth = {"Authorization": f"Bearer {token}"}
    md = client.get_model_metadata(model, headers=auth)
    inp_name, out_name = md["inputs"][0]["name"], md["outputs"][0]["name"]
    predicted: list[str] = []
    for start in range(0, len(images), 16):
        chunk = np.array(images[start : start + 16], dtype=np.object_)
        tensor = httpclient.InferInput(inp_name, [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(chunk, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(out_name, binary_data=True)]
        scores = client.infer(model, [tensor], outputs=wanted, headers=auth).as_numpy(out_name)
        predicted += [str(i) for i in scores.argmax(axis=1)]
    client.close()
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    print(f"online service accuracy on the validation split (tritonclient.http): {accuracy:.3f}")
    return accuracy


def batch_evaluation(demo: FleetDemo, model: str, version: str, dataset: dict[str, Any]) -> float:
    """A batch service over the validation split; its evaluation (accuracy, per class)."""
    t0 = time.monotonic()
    demo.api.services.create(
        "digits-eval",
        [{"model": model, "version": version}],
        type="batch",
        input={
            "dataset_id": dataset["dataset_id"],
            "dataset_version": dataset["name"],
            "split": "validation",
        },
    )
    try:
        service = demo.api.services.wait("digits-eval", ("succeeded", "failed"), 300, poll_s=0.5)
    except WaitTimeout:
        state = demo.api.services.get("digits-eval").state
        raise SystemExit(f"demo: batch service still {state} after 300 s") from None
    if service.state != "succeeded" or service.evaluation is None:
        raise SystemExit(f"demo: batch service failed: {service.reason}")
    page = demo.api.services.results_page("digits-eval", limit=3)
    for row in page.items:
        print(f"  {row.source}: label {row.label}, predicted {row.predicted}")
    ev = service.evaluation
    print(
        f"batch service over {page.total} validation images in "
        f"{time.monotonic() - t0:.1f} s: accuracy {ev['accuracy']:.3f} "
        f"({ev['correct']}/{ev['total']}); results: GET /api/v1/services/digits-eval/results.csv"
    )
    return float(ev["accuracy"])


def run_ai_flow(demo: FleetDemo, base_url: str, token: str, grpc_port: int) -> dict[str, Any]:
    """Steps 15-20; the trained model (``run_training_demo``'s answer)."""
    step("15. Data: create a digits dataset, import a zip, label it, publish V001")
    version = run_datasets_demo(base_url, token, per_class=60)
    step("16. Train the built-in image classifier on V001; register, convert, gate, sign")
    trained = run_training_demo(
        base_url,
        token,
        dataset_id=version["dataset_id"],
        version=version["name"],
        epochs=20,
        out_dir=demo.work / "registry",
    )
    step("17. Deploy the trained model to the device (MQTT, chunked pull, verify, self-test)")
    deploy_digest(demo, trained["package_digest"])
    step("18. The device's predictions on the validation split")
    predict_validation(grpc_port, trained["model"], version["data_url"])
    step("19. The same model as an online service: two agent replicas, OIP REST via the API")
    serve_online(demo, base_url, token, trained["model"], trained["version"], version["data_url"])
    step("20. A batch service over the validation split: results and evaluation")
    batch_evaluation(demo, trained["model"], trained["version"], version)
    return trained
