"""Alembic environment for needflow's system of record.

The database URL is the caller's (`config.attributes["database_url"]`, set by
`store.migrate.alembic_config`) or else the one needflow's settings resolve. Autogenerate
compares against `store.models.Base.metadata` and renders custom types as plain
SQLAlchemy types, so revisions do not import the models and run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import create_engine, pool
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from config import get_settings
from store.db import sync_url
from store.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return sync_url(config.attributes.get("database_url") or get_settings().resolved_database_url)


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render a TypeDecorator (e.g. UTCDateTime) as the SQLAlchemy type it stores as, and
    JSONB without alembic's default `astext_type=Text()`, which names no import."""
    if kind != "type":
        return False
    if isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    if isinstance(obj, JSONB):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "postgresql.JSONB()"
    return False


def configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = database_url()
    configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # A plain engine, not store.db's: SQLite batch migrations need foreign_keys left OFF.
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
