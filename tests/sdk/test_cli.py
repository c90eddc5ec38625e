"""eictl against a real control plane: the everyday verbs, --json, exit codes, token sources."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_inference_sdk.cli import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)
from tests.sdk.conftest import Stack
from tests.sdk.live import API_TOKEN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("EDGE_INFERENCE_URL", stack.url)
    monkeypatch.setenv("EDGE_INFERENCE_TOKEN", API_TOKEN)
    monkeypatch.setenv("EDGE_INFERENCE_CONFIG", str(tmp_path / "config.toml"))
    return stack


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lists_as_tables_and_json(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "datasets", "list")
    assert code == EXIT_OK
    assert out.splitlines()[0].split() == ["ID", "NAME", "TYPE", "SAMPLE_COUNT"]
    assert "digits" in out
    code, out, _ = run(capsys, "--json", "datasets", "versions", "digits")  # by name
    assert code == EXIT_OK
    versions = json.loads(out)
    assert [v["name"] for v in versions] == [env.version]


def test_datasets_import_a_folder_and_publish(
    env: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "two-digits"
    for digit in ("1", "2"):
        (folder / digit).mkdir(parents=True)
        for png in sorted((env.tmp / "digits" / digit).glob("*.png"))[:4]:
            (folder / digit / png.name).write_bytes(png.read_bytes())
    assert run(capsys, "datasets", "create", "cli-two")[0] == EXIT_OK
    code, out, err = run(capsys, "--json", "datasets", "import", "cli-two", str(folder))
    assert code == EXIT_OK, err
    assert json.loads(out)["imported"] == 8 and "upload: 100%" in err
    code, out, _ = run(capsys, "--json", "datasets", "publish", "cli-two", "--seed", "3")
    assert code == EXIT_OK
    assert json.loads(out)["name"] == "V001" and json.loads(out)["sample_count"] == 8


def test_exit_codes(env: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--json", "datasets", "create", "digits")
    assert code == EXIT_REFUSED and json.loads(out)["error"] == "Conflict"
    assert "409" in err
    assert run(capsys, "jobs", "get", "no-such-job")[0] == EXIT_REFUSED
    assert run(capsys, "--token", "wrong", "datasets", "list")[0] == EXIT_AUTH
    code, _, err = run(capsys, "--url", "http://127.0.0.1:9", "datasets", "list")
    assert code == EXIT_UNREACHABLE and "cannot reach" in err
    assert run(capsys, "jobs", "run")[0] == EXIT_USAGE  # the job name is missing
    assert run(capsys, "deploy", "--device", "x")[0] == EXIT_USAGE
    code, _, err = run(capsys, "captures", "review", "cap-x", "correct")
    assert code == EXIT_USAGE and "needs the LABEL" in err
    code, _, err = run(capsys, "captures", "review", "cap-x", "accept", "seven")
    assert code == EXIT_USAGE and "takes no LABEL" in err
    assert run(capsys, "captures", "review", "cap-x", "accept")[0] == EXIT_REFUSED  # asked: 404


def test_login_writes_a_private_config_file_used_without_env(
    env: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "--json", "login", "--token", API_TOKEN)
    assert code == EXIT_OK
    path = Path(json.loads(out)["config"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.delenv("EDGE_INFERENCE_URL")
    monkeypatch.delenv("EDGE_INFERENCE_TOKEN")
    assert run(capsys, "datasets", "list")[0] == EXIT_OK
    assert run(capsys, "--token", "wrong", "login")[0] == EXIT_AUTH  # checked before saving
    assert run(capsys, "datasets", "list")[0] == EXIT_OK


def test_jobs_run_follow_exit_code_says_how_the_job_ended(
    env: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "ok.py").write_text(
        "import edge_training as et\n"
        "data_url, train_url, hp = et.parse_args()\n"
        "print('samples', len(et.read_manifest(data_url)), 'lr', hp['lr'])\n"
    )
    (code_dir / "bad.py").write_text("raise SystemExit('bad input')\n")
    code, out, err = run(
        capsys, "--json", "jobs", "run", "cli-ok", "--code", str(code_dir), "--boot-file",
        "ok.py", "--dataset", "digits", "--hp", "lr=0.5", "--follow", "--poll", "0.3",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert json.loads(out)["state"] == "succeeded"  # stdout stays one JSON document
    assert f"samples {env.sample_count} lr 0.5" in err  # the followed log, on stderr with --json
    code, out, err = run(
        capsys, "jobs", "run", "cli-bad", "--code", str(code_dir), "--boot-file", "bad.py",
        "--dataset", env.dataset_id, "--follow", "--poll", "0.3",
    )  # fmt: skip
    assert code == EXIT_FAILED
    assert "bad input" in out  # the log, followed on stdout
    assert "failed" in err


def test_models_devices_deploy(
    env: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, models_dir: Path
) -> None:
    code, out, err = run(
        capsys, "--json", "models", "import", "cli-mlp", str(models_dir / "mlp.tflite"),
        "--wait", "--poll", "0.3",
    )  # fmt: skip
    assert code == EXIT_OK, err
    mv = json.loads(out)
    assert mv["state"] == "ready" and "upload: 100%" in err  # progress on stderr
    code, out, err = run(capsys, "--json", "models", "download", "cli-mlp", mv["version"],
                         "-o", str(tmp_path))  # fmt: skip
    assert code == EXIT_OK
    path = Path(json.loads(out)["path"])
    assert path.name == f"{mv['package_digest']}.edgepkg" and "download: 100%" in err
    code, out, _ = run(capsys, "--json", "models", "download", "cli-mlp", mv["version"],
                       "-o", f"{tmp_path}/packages/")  # fmt: skip
    assert code == EXIT_OK  # a trailing slash names a folder, made when missing
    assert Path(json.loads(out)["path"]) == tmp_path / "packages" / path.name
    # A signed package from elsewhere goes in with `packages upload` (here: the same bytes).
    code, out, err = run(capsys, "--json", "packages", "upload", str(path))
    assert code == EXIT_OK and json.loads(out)["digest"] == mv["package_digest"]
    assert "upload: 100%" in err
    code, out, _ = run(capsys, "packages", "list")
    assert code == EXIT_OK and out.split()[:3] == ["DIGEST", "NAME", "VERSION"]
    assert mv["package_digest"] in out
    code, out, _ = run(capsys, "packages", "get", mv["package_digest"])
    assert code == EXIT_OK and "cli-mlp" in out
    assert run(capsys, "packages", "upload", str(tmp_path / "missing.edgepkg"))[0] == EXIT_USAGE
    not_a_package = tmp_path / "junk.edgepkg"
    not_a_package.write_bytes(b"not a package")
    assert run(capsys, "packages", "upload", str(not_a_package))[0] == EXIT_REFUSED
    code, out, _ = run(capsys, "models", "list")
    assert code == EXIT_OK and out.split()[:3] == ["NAME", "LATEST", "VERSIONS"]  # a table
    assert "cli-mlp" in out
    code, out, _ = run(capsys, "models", "list", "cli-mlp")
    assert code == EXIT_OK and out.split()[:4] == ["NAME", "VERSION", "STATE", "PACKAGE_DIGEST"]
    assert mv["package_digest"] in out
    bundle = tmp_path / "bundle.json"
    code, out, _ = run(capsys, "--json", "devices", "register", "--id", "cli-dev", "--label",
                       "site=lab", "--bundle", str(bundle))  # fmt: skip
    assert code == EXIT_OK and json.loads(out)["device"]["id"] == "cli-dev"
    assert json.loads(bundle.read_text())["device_id"] == "cli-dev"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    code, out, _ = run(capsys, "--json", "deploy", "--model", "cli-mlp", "--version",
                       mv["version"], "--selector", "site=lab")  # fmt: skip
    assert code == EXIT_OK
    deployment = json.loads(out)
    assert deployment["package_digest"] == mv["package_digest"]
    assert [t["device_id"] for t in deployment["targets"]] == ["cli-dev"]
    digest = mv["package_digest"]
    code, out, _ = run(capsys, "--json", "deploy", "--package", digest, "--device", "cli-dev",
                       "--guard", '{"bake_s": 5}')  # fmt: skip
    assert code == EXIT_OK and json.loads(out)["guard"]["bake_s"] == 5
    code, out, _ = run(capsys, "--json", "deploy", "--package", digest, "--device", "cli-dev",
                       "--standby", "--weight", "10")  # fmt: skip
    assert code == EXIT_OK
    got = json.loads(out)
    assert (got["standby"], got["weight"]) == (True, 10.0)
    code, out, _ = run(capsys, "--json", "deploy", "--package", mv["package_digest"], "--device",
                       "cli-dev", "--action", "remove")  # fmt: skip
    assert code == EXIT_OK and json.loads(out)["action"] == "remove"
    assert run(capsys, "deploy", "--package", mv["package_digest"], "--device", "cli-dev",
               "--guard", "{bad")[0] == EXIT_USAGE  # fmt: skip
    code, _, err = run(capsys, "deploy", "--package", digest, "--device", "cli-dev",
                       "--weight", "10")  # fmt: skip
    assert code == EXIT_USAGE and "--standby" in err
    code, _, err = run(capsys, "deploy", "--package", digest, "--device", "cli-dev",
                       "--guard", '{"bake_s": 5, "max_p99": 9}')  # fmt: skip
    assert code == EXIT_REFUSED and "max_p99" in err  # a misspelt limit is not dropped
    assert run(capsys, "models", "wait", "cli-mlp", "99")[0] == EXIT_REFUSED


def test_console_entry_point_runs(env: Stack) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_inference_sdk.cli", "--json", "notebooks", "list"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == EXIT_OK, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)


def test_every_command_with_a_result_prints_a_table_without_json() -> None:
    """A command that returns data must name its columns, or it would print raw JSON by default."""
    import edge_inference_sdk.cli as cli

    streams_itself = {cli.cmd_jobs_logs}
    commands = {
        value
        for name, value in vars(cli).items()
        if name.startswith("cmd_") and callable(value) and value not in streams_itself
    }
    missing = sorted(c.__name__ for c in commands if c not in cli._COLUMNS)
    assert not missing, f"commands printing JSON without --json: {missing}"


def test_keys_list_shows_the_current_signing_key(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == EXIT_OK
    assert out.splitlines()[0].split() == ["KEY_ID", "GENERATION", "STATE", "NOT_AFTER"]
    keys = env.client.keys.list()
    current = [k for k in keys if k.state == "current"]
    assert len(current) == 1 and current[0].key_id in out


def test_services_get_shows_an_edge_rollout_by_stage() -> None:
    """``eictl services get`` on an edge service: the rollout's version and state, then each
    stage with its devices and gates; nothing more for a service without a rollout."""
    from edge_inference_sdk.cli import rollout_table

    assert rollout_table({"name": "svc", "rollout": None}) == ""
    gates = [{"gate": "installs", "passed": True}, {"gate": "error_rate", "passed": False}]
    service = {
        "rollout": {
            "number": 2,
            "model": "stripes",
            "version": "2",
            "state": "failed",
            "reason": "canary: gate error_rate failed",
            "stages": [
                {"name": "canary", "state": "failed", "devices": ["cam-1"], "gates": gates},
                {"name": "wave-1", "state": "pending", "devices": ["cam-2", "cam-3"], "gates": []},
            ],
        }
    }
    lines = rollout_table(service).splitlines()
    assert lines[0] == "rollout 2: stripes 2 failed (canary: gate error_rate failed)"
    assert lines[1].split() == ["STAGE", "STATE", "DEVICES", "GATES"]
    assert lines[2].split() == ["canary", "failed", "cam-1", "installs:ok", "error_rate:failed"]
    assert lines[3].split() == ["wave-1", "pending", "cam-2,cam-3"]
