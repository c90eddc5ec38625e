"""One spelling per instant: a time answered on creation reads back the same, on both engines.

SQLite hands back naive times and PostgreSQL aware ones; the column type (``UtcDateTime``)
makes both aware UTC, so the API never answers ``...Z`` once and a bare time later.
"""

from __future__ import annotations

import datetime as dt

from tests.datasets.conftest import API, Client
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def test_created_at_reads_back_as_it_was_answered(client: Client) -> None:
    r = client.api.post(f"{API}/datasets", json={"name": "times", "type": "image_classification"})
    assert r.status_code == 201, r.text
    created = r.json()
    read = client.api.get(f"{API}/datasets/{created['id']}").json()
    listed = next(d for d in client.api.get(f"{API}/datasets").json() if d["id"] == created["id"])
    assert created["created_at"] == read["created_at"] == listed["created_at"]
    parsed = dt.datetime.fromisoformat(read["created_at"])
    assert parsed.utcoffset() == dt.timedelta(0)
