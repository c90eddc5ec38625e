"""Shared checks for install, rejection and crash-recovery tests (and ``scripts/crash-drill``).

Which version an agent serves is decided from the outside, the way a client sees it: a
tritonclient inference whose outputs are compared with onnxruntime run directly on each candidate
artifact. What the agent left on disk is read from its data folder, never through its own code.

This module must not import ``protos.gen.inference_pb2`` or ``edge_agent.grpc``/``edge_agent.app``:
tritonclient registers the same protobuf package.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

# The crash points the agent honours (edge_agent.crash_points.INSTALL_POINTS), repeated here so
# that a renamed or removed point fails the test that checks the two lists agree.
STATE_WRITTEN_POINTS = ("after_state_write", "after_commit")

PROBE = np.random.default_rng(1234).standard_normal((2, 784)).astype(np.float32)


@cache
def reference_logits(model_path: str) -> np.ndarray:
    """The MLP's logits for ``PROBE``, from onnxruntime in this process."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": PROBE})[0]


def infer_logits(address: str, model: str = "mlp", version: str = "") -> np.ndarray:
    """One ModelInfer call through tritonclient (the public OIP v2 client)."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url=address)
    try:
        inp = tc.InferInput("input", list(PROBE.shape), "FP32")
        inp.set_data_from_numpy(PROBE)
        result = client.infer(model, [inp], model_version=version, client_timeout=20)
        out = result.as_numpy("logits")
        assert out is not None
        return out
    finally:
        client.close()


def which_model(address: str, candidates: dict[str, Path], model: str = "mlp") -> str:
    """The key of the candidate artifact whose outputs the agent returns, or 'none' / 'other'."""
    import tritonclient.utils as tu

    try:
        got = infer_logits(address, model)
    except tu.InferenceServerException as exc:
        return f"none ({exc.status()}: {exc.message()})"
    for key, path in candidates.items():
        if np.allclose(got, reference_logits(str(path)), rtol=1e-5, atol=1e-5):
            return key
    return "other"


# on-disk inspection


def data_dir(workdir: Path) -> Path:
    return Path(workdir) / "data"


def package_listing(workdir: Path) -> list[str]:
    """Every entry (hidden ones too) under data/packages, recursively, as sorted relative paths."""
    root = data_dir(workdir) / "packages"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def leftovers(workdir: Path) -> list[str]:
    """Temporary or partial files anywhere in the data folder, journals, and incoming uploads."""
    root = data_dir(workdir)
    found = [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith((".partial", ".tmp")) or ".partial" in p.name
    ]
    for sub in ("journal", "incoming"):
        d = root / sub
        if d.exists():
            found.extend(str(p.relative_to(root)) for p in d.iterdir())
    return sorted(set(found))


def committed_state(workdir: Path) -> dict[str, Any]:
    path = data_dir(workdir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def committed_digests(workdir: Path) -> set[str]:
    return {
        d
        for entry in committed_state(workdir)["models"].values()
        for d in entry["versions"].values()
    }


def package_folders(workdir: Path) -> set[str]:
    root = data_dir(workdir) / "packages"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def tar_member_span(archive: Path, member: str) -> tuple[int, int]:
    """(offset of the member's data in the file, its size)."""
    import tarfile

    with tarfile.open(archive, "r:") as tar:
        info = tar.getmember(member)
        return info.offset_data, info.size


def artifact_member(archive: Path) -> str:
    import tarfile

    with tarfile.open(archive, "r:") as tar:
        names = [m.name for m in tar.getmembers() if m.name.startswith("artifacts/")]
    assert names, f"{archive.name} holds no artifact"
    return names[0]


def recovery_violations(
    workdir: Path,
    served: str,
    expected: set[str],
    last_install: dict[str, Any],
    point: str,
    new_digest: str,
) -> list[str]:
    """Everything wrong with an agent that restarted after a crash at ``point``.

    ``served`` is what which_model() said, ``expected`` the allowed answers ("old" / "new"),
    ``last_install`` the GetStatus().last_install fields. An empty list means recovery was clean.
    """
    problems = []
    if served not in expected:
        problems.append(f"serves {served}, expected {' or '.join(sorted(expected))}")
    outcome = last_install.get("outcome")
    if outcome not in ("COMMITTED", "FAILED"):
        problems.append(f"last_install outcome is {outcome!r}, not a final state")
    if point == "before_verify":
        # Nothing was known about the package before verification: the previous report stays.
        if last_install.get("package_digest") == new_digest:
            problems.append("last_install reports a package the agent never verified")
    elif last_install.get("package_digest") != new_digest:
        problems.append("last_install does not report the interrupted install")
    elif point in STATE_WRITTEN_POINTS:
        if outcome != "COMMITTED":
            problems.append(f"last_install is {outcome} although the state names the new version")
    elif outcome != "FAILED" or "interrupted" not in last_install.get("reason", ""):
        problems.append(
            f"last_install is {outcome} ({last_install.get('reason')!r}), expected FAILED "
            "mentioning the interruption"
        )
    rest = leftovers(workdir)
    if rest:
        problems.append(f"leftovers after recovery: {rest}")
    extra = package_folders(workdir) - committed_digests(workdir)
    if extra:
        problems.append(f"unreferenced package folders: {sorted(extra)}")
    missing = committed_digests(workdir) - package_folders(workdir)
    if missing:
        problems.append(f"committed packages missing on disk: {sorted(missing)}")
    return problems
