"""Crash recovery: the agent SIGKILLs itself at every named install point and must restart clean.

For each point in ``edge_agent.crash_points.INSTALL_POINTS``: an agent serving v1 is started with
``EDGE_AGENT_CRASH_AT=<point>``, asked to install v2 (the process dies mid-install), and restarted
without the variable. It must then serve v1 or v2 (exactly v1 before the state write, exactly v2
after it), report the interrupted install as a final outcome, hold no journal, partial or
unreferenced package on disk, and accept v2 again.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edge_agent.crash_points import ENV_VAR, INSTALL_POINTS, crash_point
from protos.gen import agent_pb2
from tests.agent.agent_process import AgentProcess
from tests.agent.install_checks import (
    STATE_WRITTEN_POINTS,
    committed_digests,
    leftovers,
    package_folders,
    recovery_violations,
    which_model,
)

EXPECTED_POINTS = {
    "before_verify",
    "after_verify",
    "before_stage",
    "after_stage",
    "before_load",
    "after_load",
    "before_self_test",
    "after_self_test",
    "before_activate",
    "after_activate",
    "before_commit",
    "after_state_write",
    "after_commit",
}

# The last step the journal recorded when the agent died at each point before the state write.
JOURNALED_STEP = {
    "after_verify": "verify",
    "before_stage": "verify",
    "after_stage": "stage",
    "before_load": "stage",
    "after_load": "load",
    "before_self_test": "self_test",
    "after_self_test": "self_test",
    "before_activate": "self_test",
    "after_activate": "activate",
    "before_commit": "activate",
}


@pytest.fixture(scope="module")
def pkgs(make_package: Callable[..., Path], models_dir: Path) -> dict[str, Path]:
    return {
        "v1": make_package("mlp", "1", [models_dir / "mlp.onnx"]),
        "v2": make_package("mlp", "2", [models_dir / "mlp_v2.onnx"]),
    }


@pytest.fixture(scope="module")
def candidates(models_dir: Path) -> dict[str, Path]:
    return {"old": models_dir / "mlp.onnx", "new": models_dir / "mlp_v2.onnx"}


@pytest.fixture(scope="module")
def v1_data(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], pkgs: dict[str, Path]
) -> Path:
    """A data folder in which v1 is committed, made once by a real agent and copied per test."""
    agent = AgentProcess(tmp_path_factory.mktemp("v1-template"), [keys["public"]])
    try:
        agent.start()
        assert agent.install(pkgs["v1"]).result.outcome == "COMMITTED"
    finally:
        agent.stop()
    return agent.workdir / "data"


def _last_install(agent: AgentProcess) -> dict[str, str]:
    li = agent.status().last_install
    return {
        "outcome": li.outcome,
        "package_digest": li.package_digest,
        "failed_step": li.failed_step,
        "reason": li.reason,
        "version": li.version,
    }


def test_crash_points_are_the_documented_ones() -> None:
    assert set(INSTALL_POINTS) == EXPECTED_POINTS
    assert set(STATE_WRITTEN_POINTS) <= set(INSTALL_POINTS)


def test_an_undeclared_crash_point_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt point would never fire and its drill would pass without a crash."""
    monkeypatch.setenv(ENV_VAR, "after_stage")
    crash_point("after_verify")  # declared, not the one asked for: nothing happens
    with pytest.raises(ValueError, match="undeclared crash point"):
        crash_point("after_stagee")


@pytest.mark.parametrize(
    ("point", "upload"),
    [*((p, False) for p in INSTALL_POINTS), ("after_stage", True)],
    ids=[*INSTALL_POINTS, "after_stage-upload"],
)
def test_crash_at_point_recovers(
    point: str,
    upload: bool,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    v1_data: Path,
    pkgs: dict[str, Path],
    candidates: dict[str, Path],
) -> None:
    shutil.copytree(v1_data, tmp_path / "agent" / "data")
    agent = start_agent(env={"EDGE_AGENT_CRASH_AT": point})
    assert which_model(agent.address, candidates) == "old"
    v1_digest = agent.status().last_install.package_digest
    v2_digest = pkgs["v2"].name.removesuffix(".edgepkg")

    req = (
        agent_pb2.InstallPackageRequest(archive=pkgs["v2"].read_bytes())
        if upload
        else agent_pb2.InstallPackageRequest(path=str(pkgs["v2"]))
    )
    with pytest.raises(grpc.RpcError) as err:
        agent.agent_stub().InstallPackage(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert agent.wait_exit(30) == -signal.SIGKILL
    assert f"crash point {point} reached" in agent.log()

    agent.start()  # without EDGE_AGENT_CRASH_AT
    served = which_model(agent.address, candidates)
    expected = {"new"} if point in STATE_WRITTEN_POINTS else {"old"}
    last = _last_install(agent)
    problems = recovery_violations(agent.workdir, served, expected, last, point, v2_digest)
    assert not problems, f"{point}: {problems}\n{agent.log()}"
    if point == "before_verify":
        assert last["package_digest"] == v1_digest and last["outcome"] == "COMMITTED"
    elif point not in STATE_WRITTEN_POINTS:
        assert last["failed_step"] == JOURNALED_STEP[point]
    status = agent.status()
    assert status.ready
    (mlp,) = status.models
    assert mlp.active_version == ("2" if point in STATE_WRITTEN_POINTS else "1")

    # The interrupted install can simply be repeated.
    resp = agent.install(pkgs["v2"])
    assert resp.result.outcome == "COMMITTED"
    assert resp.result.package_digest == v2_digest
    assert which_model(agent.address, candidates) == "new"
    assert not leftovers(agent.workdir)
    assert (
        package_folders(agent.workdir)
        == committed_digests(agent.workdir)
        == {
            v1_digest,
            v2_digest,
        }
    )
