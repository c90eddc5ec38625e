"""Installing packages into a real agent, and every way an install must be refused.

Installs go through the agent's gRPC ``InstallPackage`` (by path and by archive bytes) and through
``edge-agent install --offline``. Each rejection must answer FAILED_PRECONDITION with the reason,
report FAILED with the failed step in ``GetStatus.last_install``, leave v1 serving (checked with a
tritonclient inference) and write nothing into ``data/packages``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_packager.archive import open_package, sha256_file, write_archive
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileRef
from model_packager.signing import load_private_key, sign_manifest
from protos.gen import agent_pb2
from tests.agent.agent_process import AgentProcess
from tests.agent.install_checks import (
    artifact_member,
    committed_digests,
    committed_state,
    infer_logits,
    leftovers,
    package_folders,
    package_listing,
    reference_logits,
    tar_member_span,
    which_model,
)

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"


def digest_of(pkg: Path) -> str:
    return sha256_file(pkg)


@pytest.fixture(scope="module")
def v1(make_package: Callable[..., Path], models_dir: Path) -> Path:
    return make_package("mlp", "1", [models_dir / "mlp.onnx"])


@pytest.fixture(scope="module")
def v2(make_package: Callable[..., Path], models_dir: Path) -> Path:
    return make_package("mlp", "2", [models_dir / "mlp_v2.onnx"])


@pytest.fixture(scope="module")
def candidates(models_dir: Path) -> dict[str, Path]:
    return {"v1": models_dir / "mlp.onnx", "v2": models_dir / "mlp_v2.onnx"}


# happy paths


def test_install_by_path_then_by_bytes(
    start_agent: Callable[..., AgentProcess],
    v1: Path,
    v2: Path,
    candidates: dict[str, Path],
) -> None:
    agent = start_agent()
    resp = agent.install(v1)
    assert resp.result.outcome == "COMMITTED"
    assert resp.result.package_digest == digest_of(v1)
    assert (resp.result.name, resp.result.version) == ("mlp", "1")
    assert resp.model.active and resp.model.state == "READY"
    assert resp.model.runtime == "onnx"
    assert which_model(agent.address, candidates) == "v1"

    req = agent_pb2.InstallPackageRequest(archive=v2.read_bytes())
    resp = agent.agent_stub().InstallPackage(req, timeout=60)
    assert resp.result.outcome == "COMMITTED"
    assert resp.result.package_digest == digest_of(v2)
    assert which_model(agent.address, candidates) == "v2"
    # The old version stays addressable by its number.
    np.testing.assert_allclose(
        infer_logits(agent.address, version="1"),
        reference_logits(str(candidates["v1"])),
        rtol=1e-5,
        atol=1e-5,
    )

    status = agent.status()
    assert status.ready
    assert status.last_install.outcome == "COMMITTED"
    assert status.last_install.package_digest == digest_of(v2)
    assert status.last_install.failed_step == ""
    (mlp,) = status.models
    assert mlp.active_version == "2"
    assert {v.version: v.package_digest for v in mlp.versions} == {
        "1": digest_of(v1),
        "2": digest_of(v2),
    }
    assert package_folders(agent.workdir) == {digest_of(v1), digest_of(v2)}
    assert not leftovers(agent.workdir)

    # The committed state survives a restart.
    agent.stop()
    agent.start()
    assert which_model(agent.address, candidates) == "v2"
    assert agent.status().last_install.package_digest == digest_of(v2)


def test_install_without_activation_keeps_the_active_version(
    start_agent: Callable[..., AgentProcess], v1: Path, v2: Path, candidates: dict[str, Path]
) -> None:
    agent = start_agent()
    agent.install(v1)
    resp = agent.install(v2, activate=False)
    assert resp.result.outcome == "COMMITTED" and not resp.model.active
    assert which_model(agent.address, candidates) == "v1"
    # Reinstalling the same package is idempotent.
    assert agent.install(v2, activate=False).result.outcome == "COMMITTED"
    assert package_folders(agent.workdir) == {digest_of(v1), digest_of(v2)}
    # What a restart would serve: both versions committed, v1 still the active one.
    assert committed_state(agent.workdir)["models"]["mlp"] == {
        "active": "1",
        "versions": {"1": digest_of(v1), "2": digest_of(v2)},
    }


def _edge_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [str(EDGE_AGENT)] if EDGE_AGENT.exists() else [sys.executable, "-m", "edge_agent.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_install_offline_cli(
    tmp_path: Path,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
    v1: Path,
    candidates: dict[str, Path],
) -> None:
    agent = AgentProcess(tmp_path / "agent", [keys["public"]])
    try:
        done = _edge_agent("install", "--offline", "--config", str(agent.config_path), str(v1))
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["outcome"] == "COMMITTED"
        assert outcome["package_digest"] == digest_of(v1)

        # A refused package exits 1, says why, and leaves the store as it was.
        before = package_listing(agent.workdir)
        untrusted = make_package("mlp", "2", [models_dir / "mlp.onnx"], key="other_private")
        done = _edge_agent(
            "install", "--offline", "--config", str(agent.config_path), str(untrusted)
        )
        assert done.returncode == 1
        refused = json.loads(done.stdout)
        assert refused["outcome"] == "FAILED" and refused["failed_step"] == "verify"
        assert "not trusted" in refused["reason"]
        assert package_listing(agent.workdir) == before

        agent.start()
        assert which_model(agent.address, candidates) == "v1"
        last = agent.status().last_install
        assert last.outcome == "FAILED" and "not trusted" in last.reason
        assert committed_digests(agent.workdir) == {digest_of(v1)}
    finally:
        agent.stop()


# rejections

REJECTIONS = {
    # case: (failed_step, words the reason must contain)
    "tampered": ("verify", "sha256 does not match"),
    "untrusted_key": ("verify", "not trusted"),
    "unsigned": ("verify", "not signed"),
    "traversal_parent": ("verify", "parent-relative"),
    "traversal_absolute": ("verify", "absolute"),
    "symlink_member": ("verify", "link"),
    "truncated": ("verify", "not a readable package archive"),
    "not_an_archive": ("verify", "not a readable package archive"),
    "golden_mismatch": ("self_test", "golden"),
    "same_version_other_content": ("verify", "already installed"),
}


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def _crafted_tar(dest: Path, members: list[tarfile.TarInfo], v1: Path) -> Path:
    """A tar holding v1's real manifest and signature, then the given hostile members."""
    with tarfile.open(v1, "r:") as src:
        manifest = src.extractfile(MANIFEST_NAME).read()  # type: ignore[union-attr]
        signature = src.extractfile(SIGNATURE_NAME).read()  # type: ignore[union-attr]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST_NAME, manifest), (SIGNATURE_NAME, signature)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in members:
            tar.addfile(info, io.BytesIO(b"pwned\n") if info.isfile() else None)
    return dest


def _file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(b"pwned\n")
    return info


def _golden_mismatch(out: Path, keys: dict[str, Path], models_dir: Path) -> Path:
    """Validly signed, every digest right, but the artifact is mlp_v2 and the golden are mlp's."""
    base = build_package(
        BuildSpec("mlp", "3", [ArtifactInput(models_dir / "mlp.onnx")]), out / "base", None
    )
    reader = open_package(base)
    (variant,) = reader.manifest.variants
    swapped = models_dir / "mlp_v2.onnx"
    artifact = FileRef(
        path=variant.artifact.path, sha256=sha256_file(swapped), size=swapped.stat().st_size
    )
    manifest = replace(reader.manifest, variants=[replace(variant, artifact=artifact)])
    manifest_bytes = manifest.to_bytes()
    with tarfile.open(base, "r:") as tar:
        golden_bytes = tar.extractfile(variant.golden.path).read()  # type: ignore[union-attr]
    signature = sign_manifest(manifest_bytes, load_private_key(keys["private"]))
    return write_archive(
        out,
        manifest_bytes,
        {variant.artifact.path: swapped, variant.golden.path: golden_bytes},
        signature,
    )


@pytest.fixture(scope="module")
def bad_packages(
    tmp_path_factory: pytest.TempPathFactory,
    keys: dict[str, Path],
    make_package: Callable[..., Path],
    models_dir: Path,
    v1: Path,
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bad-packages")
    mlp = models_dir / "mlp.onnx"
    pkgs: dict[str, Path] = {}

    signed = make_package("mlp", "2", [mlp])
    tampered = _copy(signed, out / "tampered.edgepkg")
    offset, size = tar_member_span(tampered, artifact_member(tampered))
    data = bytearray(tampered.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    pkgs["tampered"] = tampered

    pkgs["untrusted_key"] = make_package("mlp", "2", [mlp], key="other_private")
    pkgs["unsigned"] = build_package(
        BuildSpec("mlp", "2", [ArtifactInput(mlp)]), out / "unsigned", None
    )
    pkgs["traversal_parent"] = _crafted_tar(
        out / "parent.edgepkg", [_file_member("../escaped.txt")], v1
    )
    pkgs["traversal_absolute"] = _crafted_tar(
        out / "absolute.edgepkg", [_file_member(str(out / "escaped-abs.txt"))], v1
    )
    link = tarfile.TarInfo("artifacts/onnx-fp32.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    pkgs["symlink_member"] = _crafted_tar(out / "symlink.edgepkg", [link], v1)

    whole = signed.read_bytes()
    truncated = out / "truncated.edgepkg"
    truncated.write_bytes(whole[: len(whole) // 2])
    pkgs["truncated"] = truncated
    garbage = out / "garbage.edgepkg"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    pkgs["not_an_archive"] = garbage

    pkgs["golden_mismatch"] = _golden_mismatch(out, keys, models_dir)
    pkgs["same_version_other_content"] = make_package("mlp", "1", [models_dir / "mlp_v2.onnx"])
    assert set(pkgs) == set(REJECTIONS)
    return pkgs


@pytest.fixture(scope="module")
def v1_agent(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], v1: Path
) -> Iterator[AgentProcess]:
    """One agent serving v1 for all rejection cases (each leaves it as it found it)."""
    agent = AgentProcess(tmp_path_factory.mktemp("rejections"), [keys["public"]])
    agent.start()
    try:
        assert agent.install(v1).result.outcome == "COMMITTED"
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize("via", ["path", "bytes"])
@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejected_install_leaves_v1_serving(
    case: str,
    via: str,
    v1_agent: AgentProcess,
    bad_packages: dict[str, Path],
    v1: Path,
    candidates: dict[str, Path],
) -> None:
    agent = v1_agent
    pkg = bad_packages[case]
    step, words = REJECTIONS[case]
    assert which_model(agent.address, candidates) == "v1"
    before = package_listing(agent.workdir)
    assert before, "v1 must be on disk"

    req = (
        agent_pb2.InstallPackageRequest(path=str(pkg))
        if via == "path"
        else agent_pb2.InstallPackageRequest(archive=pkg.read_bytes())
    )
    with pytest.raises(grpc.RpcError) as err:
        agent.agent_stub().InstallPackage(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    details = err.value.details()
    assert f"install failed at {step}" in details
    assert words in details

    last = agent.status().last_install
    assert last.outcome == "FAILED"
    assert last.failed_step == step
    assert words in last.reason
    if case in ("golden_mismatch", "same_version_other_content"):
        # Verified packages are named in the report.
        assert last.package_digest == digest_of(pkg)

    assert which_model(agent.address, candidates) == "v1"
    assert package_listing(agent.workdir) == before
    assert not leftovers(agent.workdir)
    assert committed_digests(agent.workdir) == {digest_of(v1)}
    for escaped in (
        pkg.parent / "escaped-abs.txt",
        pkg.parent.parent / "escaped.txt",
        agent.workdir / "data" / "escaped.txt",
        agent.workdir / "escaped.txt",
    ):
        assert not escaped.exists(), f"{escaped} was written"
