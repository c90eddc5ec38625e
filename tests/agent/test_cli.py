"""The ``edge-agent`` command line, run as a real subprocess (the console script when installed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.agent.agent_process import AgentProcess

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"


def edge_agent(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    cmd = [str(EDGE_AGENT)] if EDGE_AGENT.exists() else [sys.executable, "-m", "edge_agent.cli"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    full_env.update(env or {})
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


def assert_clean_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    for w in words:
        assert w in done.stderr, done.stderr


@pytest.fixture
def config(tmp_path: Path, keys: dict[str, Path]) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-7",
                "data_dir": str(tmp_path / "data"),
                "grpc_port": 9100,
                "trusted_keys": [str(keys["public"])],
                "models": {"mlp": {"max_batch_size": 8}},
            }
        )
    )
    return path


def test_version() -> None:
    done = edge_agent("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("edge-agent ")


def test_validate_config_prints_effective_settings(config: Path, tmp_path: Path) -> None:
    done = edge_agent("validate-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["device_id"] == "cam-7"
    assert settings["grpc_port"] == 9100
    assert settings["data_dir"] == str(tmp_path / "data")
    assert settings["models"]["mlp"]["max_batch_size"] == 8
    assert settings["metrics_port"] == 8002  # a default fills what the file leaves out
    assert "warning" not in done.stderr

    # The environment wins over the file, nested settings included.
    done = edge_agent(
        "validate-config",
        "--config",
        str(config),
        env={"EDGE_AGENT_GRPC_PORT": "9200", "EDGE_AGENT_DEVICE_ID": "cam-8"},
    )
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert (settings["grpc_port"], settings["device_id"]) == (9200, "cam-8")
    assert settings["models"]["mlp"]["max_batch_size"] == 8


def test_validate_config_warns_without_trusted_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("grpc_port: 9001\n")
    done = edge_agent("validate-config", "--config", str(path))
    assert done.returncode == 0
    assert "no trusted_keys" in done.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("grpc_port: 9100\nbogus_key: 1\n", ("bogus_key", "Extra inputs are not permitted")),
        ("grpc_port: lots\n", ("grpc_port", "valid integer")),
        ("models:\n  mlp:\n    max_batch_size: -1\n", ("models.mlp.max_batch_size",)),
        ("grpc_port: [9100\n", ("not valid YAML", "line 1")),
        ("- grpc_port\n- 9100\n", ("must be a mapping",)),
    ],
    ids=["unknown-key", "bad-type", "bad-nested-value", "yaml-syntax", "not-a-mapping"],
)
def test_validate_config_rejects_bad_files(
    tmp_path: Path, content: str, words: tuple[str, ...]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(content)
    assert_clean_error(edge_agent("validate-config", "--config", str(path)), *words)


def test_validate_config_bad_env_and_missing_file(config: Path, tmp_path: Path) -> None:
    done = edge_agent(
        "validate-config", "--config", str(config), env={"EDGE_AGENT_GRPC_PORT": "-5"}
    )
    assert_clean_error(done, "grpc_port")
    assert_clean_error(
        edge_agent("validate-config", "--config", str(tmp_path / "nope.yaml")), "does not exist"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_and_batch_against_a_running_agent(
    start_agent: Callable[..., AgentProcess],
    make_package: Callable[..., Path],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    agent = start_agent(device_id="cli-test")
    pkg = make_package("mlp", "1", [models_dir / "mlp.onnx"])

    done = edge_agent("install", "--upload", "--address", agent.address, str(pkg))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["outcome"] == "COMMITTED"

    done = edge_agent("status", "--address", agent.address)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["deviceId"] == "cli-test" and status["ready"] is True
    assert status["lastInstall"]["outcome"] == "COMMITTED"
    assert status["lastInstall"]["packageDigest"] == pkg.name.removesuffix(".edgepkg")
    assert [m["activeVersion"] for m in status["models"]] == ["1"]

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        np.save(inputs / f"{i}.npy", np.full((1, 784), i, np.float32))
    out = tmp_path / "results.jsonl"
    done = edge_agent(
        "batch",
        "--address",
        agent.address,
        "submit",
        "--model",
        "mlp",
        "--input-dir",
        str(inputs),
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["modelVersion"] == "1" and int(job["total"]) == 3

    deadline = time.monotonic() + 30
    while True:
        done = edge_agent("batch", "--address", agent.address, "get", job["jobId"])
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        if got["state"] in ("SUCCEEDED", "FAILED", "CANCELED") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got["state"] == "SUCCEEDED" and int(got["done"]) == 3
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2]

    # Errors from the agent come back as one line with the gRPC code.
    done = edge_agent("batch", "--address", agent.address, "get", "no-such-job")
    assert_clean_error(done, "NOT_FOUND")
    done = edge_agent(
        "batch", "--address", agent.address, "submit", "--model", "nope", "--input-dir", "/"
    )
    assert_clean_error(done, "NOT_FOUND")


def test_status_without_an_agent_fails_cleanly() -> None:
    done = edge_agent("status", "--address", f"127.0.0.1:{_free_port()}")
    assert_clean_error(done, "UNAVAILABLE")
