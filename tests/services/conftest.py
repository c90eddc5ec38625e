"""Shared fixtures of the services tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AppContext]:
    """An application context on a fresh, migrated SQLite database (no broker, no threads)."""
    settings = Settings(
        api_token="t" * 32, mqtt_password="p" * 32, data_dir=tmp_path, dev_mode=True
    )
    c = AppContext.from_settings(settings)
    upgrade(c.engine)
    yield c
    c.close()
