"""The database: declarative base, engine and session factory, and migrations at startup.

Migrations run programmatically (no alembic.ini): the scripts ship inside the package, so an
installed control plane upgrades its own database on start.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Column, DateTime, Engine, create_engine, event, select, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parents[1] / "migrations"


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Sessions are used from the API's worker threads and the MQTT thread.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


# Any constant: the PostgreSQL advisory lock that serialises migrations between replicas.
MIGRATION_LOCK = 0x65646765


def upgrade(engine: Engine) -> None:
    """Bring the database schema to the newest migration.

    Several replicas starting at once on PostgreSQL take turns (a transaction-scoped advisory
    lock): the first migrates, the others then find the schema current. SQLite serialises
    writers by itself.
    """
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    logger.info("database schema is up to date")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A UTC time that comes back aware from every engine.

    SQLite hands back naive times where PostgreSQL hands back aware ones, so without this a row
    answered right after its creation said ``...Z`` and the same row read back later said nothing:
    one API, two spellings of the same instant. Naive times going in are taken as UTC; aware
    ones are stored as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UtcDateTime(), dict[str, Any]: JSON}


def references(session: Session, column: Column[Any], value: Any) -> dict[str, list[Any]]:
    """Primary keys of the rows, by table, whose foreign key points at ``column == value``.

    Lets a domain say what uses one of its rows (a package named by deployments, a job named by
    model versions) without importing the domain above it that holds the reference: the
    foreign keys in the metadata already know. Only tables whose models are imported are seen;
    the database's own foreign keys still refuse a delete the others would break.
    """
    found: dict[str, list[Any]] = {}
    target = f"{column.table.name}.{column.name}"
    for table in column.table.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.target_fullname == target:
                keys = list(table.primary_key.columns)
                rows = session.execute(select(*keys).where(fk.parent == value)).all()
                if rows:
                    found.setdefault(table.name, []).extend(
                        r[0] if len(keys) == 1 else tuple(r) for r in rows
                    )
    return found


def describe_references(found: dict[str, list[Any]]) -> str:
    """``deployments dep-1, dep-2; model_versions 3``."""
    return "; ".join(f"{table} {', '.join(str(k) for k in keys)}" for table, keys in found.items())
