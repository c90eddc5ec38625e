"""A device's state in a rollout stage, as the edge service page words it, from the stage's
deployment target (state and the agent's step) and the stage's rollback deployment."""

from __future__ import annotations

import pytest

from control_plane.dashboard.pages.edge import device_state


@pytest.mark.parametrize(
    ("target", "step", "rollback", "shown"),
    [
        ("", "", None, "pending"),  # the stage has no deployment yet
        ("pending", "", None, "pending"),
        ("in_progress", "download", None, "downloading"),
        ("in_progress", "install", None, "installing"),
        ("installed", "commit", None, "installed"),
        ("failed", "verify", None, "failed"),
        ("installed", "commit", "pending", "rolling back"),
        ("installed", "commit", "in_progress", "rolling back"),
        ("installed", "commit", "installed", "rolled back"),
        ("installed", "commit", "removed", "rolled back"),  # it had no previous version
        ("installed", "commit", "failed", "rollback failed"),
        ("superseded", "", None, "superseded"),
    ],
)
def test_device_state(target: str, step: str, rollback: str | None, shown: str) -> None:
    assert device_state(target, step, rollback) == shown
