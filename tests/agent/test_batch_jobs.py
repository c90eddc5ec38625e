"""On-device batch jobs through AgentService: results, bad inputs, errors, restarts.

Every result line is compared with onnxruntime run directly on the same artifact; a job
interrupted by ``kill -9`` must finish after the restart with exactly one line per input, and a
job whose pinned version disappeared must be reported FAILED, never lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.gen import agent_pb2
from tests.agent.agent_process import AgentProcess

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


@pytest.fixture(scope="module")
def v1(make_package: Callable[..., Path], models_dir: Path) -> Path:
    return make_package("mlp", "1", [models_dir / "mlp.onnx"])


@pytest.fixture(scope="module")
def v2(make_package: Callable[..., Path], models_dir: Path) -> Path:
    return make_package("mlp", "2", [models_dir / "mlp_v2.onnx"])


@pytest.fixture(scope="module")
def ort_mlp(models_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(["logits"], {"input": x.reshape(1, 784)})[0]

    return run


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], v1: Path
) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path_factory.mktemp("batch-agent"), [keys["public"]])
    a.start()
    try:
        assert a.install(v1).result.outcome == "COMMITTED"
        yield a
    finally:
        a.stop()


def submit(agent: AgentProcess, **kw: Any) -> agent_pb2.BatchJob:
    kw.setdefault("model_name", "mlp")
    return agent.agent_stub().SubmitBatchJob(agent_pb2.SubmitBatchJobRequest(**kw), timeout=30)


def get(agent: AgentProcess, job_id: str) -> agent_pb2.BatchJob:
    return agent.agent_stub().GetBatchJob(agent_pb2.GetBatchJobRequest(job_id=job_id), timeout=10)


def wait(agent: AgentProcess, job_id: str, timeout: float = 60) -> agent_pb2.BatchJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(agent, job_id)
        if job.state in TERMINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.state} after {timeout}s ({job.done} done)")


def results(job: agent_pb2.BatchJob) -> list[dict[str, Any]]:
    lines = Path(job.results_path).read_text().splitlines()
    return [json.loads(line) for line in lines]


def write_inputs(folder: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in range(n):
        # Both a bare sample and one with its batch dimension are valid inputs.
        shape = (784,) if i % 2 else (1, 784)
        path = folder / f"in-{i:05d}.npy"
        arrays[str(path)] = rng.standard_normal(shape).astype(np.float32)
        np.save(path, arrays[str(path)])
    return arrays


def assert_matches(line: dict[str, Any], x: np.ndarray, ort_mlp: Callable) -> None:
    assert "error" not in line, line
    logits = line["outputs"]["logits"]
    assert logits["dtype"] == "float32" and logits["shape"] == [1, 10]
    np.testing.assert_allclose(
        np.asarray(logits["data"], dtype=np.float32), ort_mlp(x), rtol=1e-5, atol=1e-6
    )


def test_folder_job_matches_onnxruntime_and_isolates_bad_files(
    agent: AgentProcess, tmp_path: Path, ort_mlp: Callable
) -> None:
    inputs = write_inputs(tmp_path / "in", 6)
    np.save(tmp_path / "in" / "in-00002-wrong-shape.npy", np.zeros((3, 100), np.float32))
    np.save(tmp_path / "in" / "in-00003-wrong-dtype.npy", np.zeros((1, 784), np.float64))
    (tmp_path / "in" / "in-00004-corrupt.npy").write_bytes(b"\x93NUMPY garbage, not an array")
    (tmp_path / "in" / "ignored.txt").write_text("not an input")

    job = submit(agent, input_dir=str(tmp_path / "in"))
    assert job.total == 9 and job.model_version == "1"
    job = wait(agent, job.job_id)
    assert job.state == "SUCCEEDED", job.error
    assert (job.done, job.failed) == (9, 3)

    lines = results(job)
    assert [line["index"] for line in lines] == list(range(9))
    sources = sorted(str(p) for p in (tmp_path / "in").glob("*.npy"))
    assert [line["source"] for line in lines] == sources
    bad = {line["source"].rsplit("/", 1)[1]: line["error"] for line in lines if "error" in line}
    assert set(bad) == {
        "in-00002-wrong-shape.npy",
        "in-00003-wrong-dtype.npy",
        "in-00004-corrupt.npy",
    }
    assert "shape" in bad["in-00002-wrong-shape.npy"]
    assert "dtype" in bad["in-00003-wrong-dtype.npy"]
    for line in lines:
        if line["source"] in inputs:
            assert_matches(line, inputs[line["source"]], ort_mlp)

    listed = agent.agent_stub().ListBatchJobs(agent_pb2.ListBatchJobsRequest(), timeout=10)
    assert job.job_id in {j.job_id for j in listed.jobs}


def test_manifest_job_with_relative_sources(
    agent: AgentProcess, tmp_path: Path, ort_mlp: Callable
) -> None:
    inputs = write_inputs(tmp_path / "data" / "x", 4, seed=1)
    absolute = tmp_path / "elsewhere.npy"
    x_abs = np.random.default_rng(2).standard_normal((1, 784)).astype(np.float32)
    np.save(absolute, x_abs)
    manifest = tmp_path / "data" / "inputs.jsonl"
    rels = [str(Path(p).relative_to(manifest.parent)) for p in inputs]
    lines = [json.dumps({"source": r}) for r in reversed(rels)]
    lines.insert(2, "")  # blank lines are skipped
    lines.append(json.dumps({"source": str(absolute)}))
    lines.append(json.dumps({"source": "x/missing.npy"}))
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "results.jsonl"

    job = submit(agent, manifest_path=str(manifest), output_path=str(out))
    assert job.total == 6 and job.results_path == str(out)
    job = wait(agent, job.job_id)
    assert job.state == "SUCCEEDED" and (job.done, job.failed) == (6, 1)
    got = results(job)
    assert [line["index"] for line in got] == list(range(6))
    # Order follows the manifest; relative sources resolve against its folder.
    expected_sources = [str(manifest.parent / r) for r in reversed(rels)]
    expected_sources += [str(absolute), str(manifest.parent / "x" / "missing.npy")]
    assert [line["source"] for line in got] == expected_sources
    for line in got[:4]:
        assert_matches(line, inputs[line["source"]], ort_mlp)
    assert_matches(got[4], x_abs, ort_mlp)
    assert "error" in got[5]


def test_submit_errors(agent: AgentProcess, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", 1)
    cases = [
        ({"model_name": "nope", "input_dir": str(tmp_path / "in")}, grpc.StatusCode.NOT_FOUND),
        (
            {"model_version": "7", "input_dir": str(tmp_path / "in")},
            grpc.StatusCode.NOT_FOUND,
        ),
        ({"input_dir": str(tmp_path / "missing")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"input_dir": str(tmp_path)}, grpc.StatusCode.INVALID_ARGUMENT),  # no inputs in it
        ({"manifest_path": str(tmp_path / "none.jsonl")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    # Not in tmp_path itself: a folder's .jsonl files are inputs.
    bad_manifest = tmp_path / "manifests" / "bad.jsonl"
    bad_manifest.parent.mkdir()
    bad_manifest.write_text('{"src": "x.npy"}\n')
    cases.append(({"manifest_path": str(bad_manifest)}, grpc.StatusCode.INVALID_ARGUMENT))
    for kw, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            submit(agent, **kw)
        assert err.value.code() == code, (kw, err.value.details())
        assert err.value.details()

    for call in ("GetBatchJob", "CancelBatchJob"):
        with pytest.raises(grpc.RpcError) as err:
            getattr(agent.agent_stub(), call)(agent_pb2.GetBatchJobRequest(job_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_existing_output_file_is_not_taken_for_results(agent: AgentProcess, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", 3)
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0}\n{"index": 1}\n')
    with pytest.raises(grpc.RpcError) as err:
        submit(agent, input_dir=str(tmp_path / "in"), output_path=str(out))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already exists" in err.value.details()
    assert out.read_text() == '{"index": 0}\n{"index": 1}\n'

    # Two jobs may not share one results file either.
    fresh = tmp_path / "fresh.jsonl"
    first = submit(agent, input_dir=str(tmp_path / "in"), output_path=str(fresh))
    with pytest.raises(grpc.RpcError):
        submit(agent, input_dir=str(tmp_path / "in"), output_path=str(fresh))
    job = wait(agent, first.job_id)
    assert job.state == "SUCCEEDED" and [r["index"] for r in results(job)] == [0, 1, 2]


def test_cancel_a_running_job(agent: AgentProcess, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", 400)
    job = submit(agent, input_dir=str(tmp_path / "in"))
    agent.agent_stub().CancelBatchJob(agent_pb2.GetBatchJobRequest(job_id=job.job_id))
    job = wait(agent, job.job_id)
    assert job.state == "CANCELED"
    assert job.done < 400
    assert len(results(job)) == job.done


def _wait_running(agent: AgentProcess, job_id: str, at_least: int) -> agent_pb2.BatchJob:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = get(agent, job_id)
        assert job.state not in TERMINAL, f"job ended before the test could interrupt it: {job}"
        if job.state == "RUNNING" and job.done >= at_least:
            return job
        time.sleep(0.01)
    raise AssertionError("job never got going")


def test_job_survives_kill_9(
    start_agent: Callable[..., AgentProcess], v1: Path, tmp_path: Path, ort_mlp: Callable
) -> None:
    n = 1000
    inputs = write_inputs(tmp_path / "in", n)
    agent = start_agent()
    agent.install(v1)
    job = submit(agent, input_dir=str(tmp_path / "in"))
    before = _wait_running(agent, job.job_id, at_least=60)
    agent.kill()
    assert before.done < n

    agent.start()
    job = wait(agent, job.job_id, timeout=90)
    assert job.state == "SUCCEEDED", job.error
    assert (job.done, job.failed, job.total) == (n, 0, n)
    lines = results(job)
    assert [line["index"] for line in lines] == list(range(n))  # no gap, no duplicate
    sources = sorted(inputs)
    assert [line["source"] for line in lines] == sources
    # Results across the interruption are all correct (checked in one onnxruntime batch).
    got = np.concatenate([np.asarray(line["outputs"]["logits"]["data"]) for line in lines])
    want = np.concatenate([ort_mlp(inputs[s]) for s in sources])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "resuming batch job" in agent.log()


def test_job_whose_version_is_gone_after_restart_is_failed(
    start_agent: Callable[..., AgentProcess], v1: Path, v2: Path, tmp_path: Path
) -> None:
    write_inputs(tmp_path / "in", 2000)  # never all processed: the job fails at the restart
    agent = start_agent(max_versions_per_model=1)
    agent.install(v1)
    job = submit(agent, input_dir=str(tmp_path / "in"))
    assert job.model_version == "1"
    _wait_running(agent, job.job_id, at_least=10)
    # Installing v2 with room for one version drops v1 from the committed state.
    assert agent.install(v2).result.outcome == "COMMITTED"
    still = get(agent, job.job_id)
    agent.kill()
    assert still.state == "RUNNING"

    agent.start()
    job = wait(agent, job.job_id)
    assert job.state == "FAILED"
    assert "no longer available" in job.error and "'1'" in job.error
    listed = agent.agent_stub().ListBatchJobs(agent_pb2.ListBatchJobsRequest(), timeout=10)
    assert [j.state for j in listed.jobs if j.job_id == job.job_id] == ["FAILED"]


# --------------------------------------------------------------------------------------------
# images and JSON Lines of tensors


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> tuple[Path, Path]:
    """The HTTP tests' image classifier (image preprocessing, softmax, top-3 with labels):
    (package, onnx file for the reference answers)."""
    from model_packager.build import ArtifactInput, BuildSpec, build_package
    from model_packager.signing import load_private_key
    from tests.agent.test_http import LABELS, POST, PRE, digits_onnx

    d = tmp_path_factory.mktemp("digits")
    onnx_path = digits_onnx(d / "digits.onnx")
    spec = BuildSpec(
        name="digits",
        version="1",
        artifacts=[ArtifactInput(onnx_path)],
        labels=LABELS,
        preprocessing=PRE,
        postprocessing=POST,
    )
    return build_package(spec, d / "pkg", load_private_key(keys["private"])), onnx_path


def test_image_folder_goes_through_preprocessing_and_top_k(
    agent: AgentProcess, digits: tuple[Path, Path], tmp_path: Path
) -> None:
    import io
    import random

    from PIL import Image

    from tests.agent.test_http import LABELS, expected_probs
    from tests.datasets.digits import digit_png

    pkg, onnx_path = digits
    assert agent.install(pkg).result.outcome == "COMMITTED"
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = random.Random(7)
    images = {f"a-{d}.png": digit_png(d, rng) for d in (3, 7, 0)}
    # Any format Pillow decodes: the first digit again as JPEG and BMP.
    img = Image.open(io.BytesIO(images["a-3.png"])).convert("L")
    for fmt, name in (("JPEG", "b.jpg"), ("BMP", "c.BMP")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        images[name] = buf.getvalue()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "d-broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("ignored")

    job = wait(agent, submit(agent, model_name="digits", input_dir=str(folder)).job_id)
    assert job.state == "SUCCEEDED", job.error
    assert (job.total, job.done, job.failed) == (6, 6, 1)
    lines = results(job)
    assert [Path(line["source"]).name for line in lines] == sorted([*images, "d-broken.png"])
    assert [line["index"] for line in lines] == list(range(6))
    for line in lines[:-1]:
        probs = expected_probs(onnx_path, [images[Path(line["source"]).name]])[0]
        best = np.argsort(-probs, kind="stable")[:3]
        (top,) = line["top_k"]
        assert [(t["index"], t["label"]) for t in top] == [(int(i), LABELS[i]) for i in best]
        np.testing.assert_allclose([t["score"] for t in top], probs[best], atol=2e-6)
        # The online path's strings and the softmaxed scores are there too.
        strings = line["outputs"]["logits_topk"]
        assert strings["shape"] == [1, 3] and strings["data"][0].endswith(f":{LABELS[best[0]]}")
        np.testing.assert_allclose(line["outputs"]["logits"]["data"], [probs], atol=2e-6)
    assert "error" in lines[-1] and "outputs" not in lines[-1]

    # A model without image preprocessing fails image lines, with the reason, not the job.
    job = wait(agent, submit(agent, model_name="mlp", input_dir=str(folder)).job_id)
    assert job.state == "SUCCEEDED" and job.failed == job.total == 6
    assert all("no image preprocessing" in line["error"] for line in results(job))


def test_jsonl_tensor_files_one_line_per_input(
    agent: AgentProcess, tmp_path: Path, ort_mlp: Callable
) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 784)).astype(np.float32) for _ in range(4)]
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", xs[0])
    tensor_lines = [
        # The protocol's JSON form, flat data and an explicit shape.
        {
            "inputs": {
                "input": {"shape": [1, 784], "datatype": "FP32", "data": xs[1].ravel().tolist()}
            }
        },
        # The short form: just the data; a bare sample gets its batch dimension.
        {"inputs": {"input": xs[2][0].tolist()}},
        {"inputs": {"nope": [1.0]}},
        {"inputs": {"input": {"shape": [2, 3], "data": [1.0]}}},
        {"inputs": {"input": {"datatype": "FP64", "data": xs[3].tolist()}}},
    ]
    text = "\n".join(json.dumps(d) for d in tensor_lines[:2]) + "\n\n"  # a blank line is skipped
    text += "not json\n" + "\n".join(json.dumps(d) for d in tensor_lines[2:]) + "\n"
    (folder / "b.jsonl").write_text(text)

    job = wait(agent, submit(agent, input_dir=str(folder)).job_id)
    assert job.state == "SUCCEEDED", job.error
    assert (job.total, job.done, job.failed) == (7, 7, 4)
    lines = results(job)
    jsonl = str(folder / "b.jsonl")
    assert [line["source"] for line in lines] == [
        str(folder / "a.npy"),
        *(f"{jsonl}#{n}" for n in (1, 2, 4, 5, 6, 7)),
    ]
    assert_matches(lines[0], xs[0], ort_mlp)
    assert_matches(lines[1], xs[1], ort_mlp)
    assert_matches(lines[2], xs[2], ort_mlp)
    assert "not JSON" in lines[3]["error"]
    assert "no input 'nope'" in lines[4]["error"]
    assert "shape" in lines[5]["error"]
    assert "FP32" in lines[6]["error"]

    # A manifest mixes file sources (a .jsonl expands to its lines) and inline inputs.
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"source": "in/b.jsonl"})
        + "\n"
        + json.dumps({"inputs": {"input": xs[3].tolist()}})
        + "\n"
    )
    job = wait(agent, submit(agent, manifest_path=str(manifest)).job_id)
    assert job.state == "SUCCEEDED" and (job.total, job.failed) == (7, 4)
    lines = results(job)
    assert lines[-1]["source"] == f"{manifest}#2"
    assert_matches(lines[0], xs[1], ort_mlp)
    assert_matches(lines[-1], xs[3], ort_mlp)


def test_jsonl_job_survives_kill_9(
    start_agent: Callable[..., AgentProcess], v1: Path, tmp_path: Path, ort_mlp: Callable
) -> None:
    n = 800
    rng = np.random.default_rng(11)
    xs = rng.standard_normal((n, 784)).astype(np.float32)
    tensors = tmp_path / "tensors.jsonl"
    with tensors.open("w") as f:
        for i, x in enumerate(xs):
            if i % 97 == 5:
                f.write('{"inputs": "broken"}\n')  # a bad line at known indexes
            f.write(json.dumps({"inputs": {"input": x.tolist()}}) + "\n")
    agent = start_agent()
    agent.install(v1)
    job = submit(agent, manifest_path=str(tensors))
    before = _wait_running(agent, job.job_id, at_least=60)
    agent.kill()
    total = job.total
    assert before.done < total

    agent.start()
    job = wait(agent, job.job_id, timeout=90)
    assert job.state == "SUCCEEDED", job.error
    bad = sum(1 for i in range(n) if i % 97 == 5)
    assert (job.done, job.failed, job.total) == (total, bad, n + bad)
    lines = results(job)
    assert [line["index"] for line in lines] == list(range(total))  # no gap, no duplicate
    assert [line["source"] for line in lines] == [f"{tensors}#{k}" for k in range(1, total + 1)]
    good = [line for line in lines if "error" not in line]
    assert len(good) == n
    got = np.concatenate([np.asarray(line["outputs"]["logits"]["data"]) for line in good])
    want = np.concatenate([ort_mlp(x) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
