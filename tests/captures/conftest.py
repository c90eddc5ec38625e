"""Capture tests run on the fleet tests' real Mosquitto and in-process control plane."""

from __future__ import annotations

from tests.fleet.conftest import (  # noqa: F401  (fixtures)
    fleet,
    fleet_keys,
    packages,
    start_fleet_agent,
    v1_data_dir,
)
