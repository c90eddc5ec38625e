"""Two publishes of one dataset at once, on PostgreSQL: the second waits for the first's row lock
and publishes the next version; nothing is lost or half-written.

The first publish is slowed while it holds the lock, so the second certainly arrives during it
(without the lock both would draw the same version number).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from control_plane.datasets.versions.service import VersionService
from tests.datasets.conftest import API, Client, digit_png
from tests.pg import POSTGRES_ONLY

pytestmark = POSTGRES_ONLY


def test_two_publishes_at_once_make_two_versions(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = client.create("race")
    rng = random.Random(2)
    files = [("files", (f"{i}.png", digit_png(i % 10, rng), "image/png")) for i in range(12)]
    r = client.api.post(f"{API}/datasets/{ds}/files", files=files, data={"label": "seven"})
    assert r.status_code == 200 and r.json()["imported"] == 12, r.text

    real = VersionService._write_folder

    def slow_write(self: VersionService, folder: Path, *args: Any, **kwargs: Any) -> str:
        time.sleep(0.5)  # holding the dataset lock: the other publish arrives meanwhile
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(VersionService, "_write_folder", slow_write)
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda seed: client.api.post(
                    f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.5, "seed": seed}
                ),
                [1, 2],
            )
        )
    assert [r.status_code for r in results] == [201, 201], [r.text for r in results]
    assert sorted(r.json()["name"] for r in results) == ["V001", "V002"]
    listed = client.api.get(f"{API}/datasets/{ds}/versions").json()
    assert [v["name"] for v in listed] == ["V001", "V002"]
    folder = client.ctx.settings.resolved_dataset_dir
    for v in listed:
        found = list(folder.rglob(f"{v['name']}/version.json"))
        assert len(found) == 1, found
    assert not list(folder.rglob(".publishing-*"))  # no half-written folder left
