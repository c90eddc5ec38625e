"""Database layer: ORM models, engine/session setup and Alembic migrations."""
