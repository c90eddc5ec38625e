"""The Alembic migrations build exactly the schema the ORM models describe, on every engine."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from control_plane.core.database import make_engine, upgrade
from control_plane.tables import Base
from tests.pg import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # also on PostgreSQL (tests/pg.py)


def test_migrations_match_models(tmp_path: Path, database_url: str | None) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    upgrade(engine)  # idempotent: a second start changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
