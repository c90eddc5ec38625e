"""Concurrency that SQLite's single writer hides, proven on PostgreSQL: two uploads of one
package, and two job runners claiming the same queued jobs. Each race has exactly one winner.

The races are made real, not hoped for: the package verifier is slowed so both uploads are past
their "is it stored?" check before either inserts, and the claimers start together on a barrier.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from control_plane.core.blobs import LocalBlobStore
from control_plane.registry.models import Package
from control_plane.registry.packages import service as package_service
from control_plane.training.models import TrainingJob
from control_plane.training.runner import claim_queued_jobs
from tests.control_plane.conftest import ControlPlane, Keys, build_test_package
from tests.pg import POSTGRES_ONLY

pytestmark = POSTGRES_ONLY


def _slow_verifier(monkeypatch: pytest.MonkeyPatch, both_checked: threading.Barrier) -> None:
    real = package_service.verify_package

    def verify(path: Path, trust: Any) -> Any:
        both_checked.wait(10)  # both uploads found nothing stored before either inserts
        return real(path, trust)

    monkeypatch.setattr(package_service, "verify_package", verify)


def _upload_together(cp: ControlPlane, paths: list[Path]) -> list[Any]:
    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(cp.upload, paths))


def test_same_package_uploaded_twice_at_once_is_stored_once(
    control_plane: ControlPlane, package_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_verifier(monkeypatch, threading.Barrier(2))
    path = package_factory("1.0.0")
    first, second = _upload_together(control_plane, [path, path])
    # One stored it (201); the other waited for that insert and answers "already stored" (200).
    assert sorted([first.status_code, second.status_code]) == [200, 201], (first, second)
    assert first.json()["digest"] == second.json()["digest"]
    with control_plane.ctx.sessions() as session:
        assert session.query(Package).count() == 1
    blobs = control_plane.ctx.blobs
    assert isinstance(blobs, LocalBlobStore)
    assert blobs.digests() == [first.json()["digest"]]


def test_two_packages_with_one_name_and_version_at_once_one_wins(
    control_plane: ControlPlane,
    onnx_model: Path,
    trusted_keys: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = build_test_package(onnx_model, tmp_path / "a", trusted_keys, "2.0.0", "clash", "a")
    b = build_test_package(onnx_model, tmp_path / "b", trusted_keys, "2.0.0", "clash", "b")
    _slow_verifier(monkeypatch, threading.Barrier(2))
    results = _upload_together(control_plane, [a, b])
    assert sorted(r.status_code for r in results) == [201, 409], results
    loser = next(r for r in results if r.status_code == 409)
    assert "clash 2.0.0 already exists" in loser.json()["detail"]
    winner = next(r for r in results if r.status_code == 201).json()["digest"]
    blobs = control_plane.ctx.blobs
    assert isinstance(blobs, LocalBlobStore)
    assert blobs.digests() == [winner]  # the loser left nothing behind


def test_two_runners_never_claim_the_same_job(control_plane: ControlPlane) -> None:
    ctx = control_plane.ctx
    # The app's own runner claims queued jobs too; with no free slot it leaves them to the two
    # runners raced here (it reads the setting on every round).
    ctx.settings.training.max_concurrent = 0
    with ctx.sessions() as session:
        for i in range(12):
            session.add(
                TrainingJob(
                    id=f"job-{i:02d}",
                    name="race",
                    version=i + 1,
                    algorithm="script",
                    framework="tensorflow",
                    timeout_s=60.0,
                )
            )
        session.commit()
    start = threading.Barrier(2)

    def runner() -> list[str]:
        taken: list[str] = []
        start.wait(10)
        while True:
            with ctx.sessions() as session:
                got = claim_queued_jobs(session, 3)
            if not got:
                return taken
            taken += got
            time.sleep(0.001)  # let the other runner in between rounds

    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda _: runner(), range(2))
    assert not set(one) & set(two), (one, two)
    assert sorted(one + two) == [f"job-{i:02d}" for i in range(12)]
    with ctx.sessions() as session:
        states = {j.state for j in session.query(TrainingJob).all()}
    assert states == {"running"}
