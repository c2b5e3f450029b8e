"""Throw-away databases for tests: a temp-file SQLite database, or a brand-new PostgreSQL
database on the server that DATABASE_URL names (dropped again afterwards)."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def test_database_base_url() -> str | None:
    """The server tests create their databases on; None (DATABASE_URL unset) means SQLite."""
    return os.environ.get("DATABASE_URL") or None


test_database_base_url.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


@contextmanager
def fresh_database_url(base_url: str | None) -> Iterator[str]:
    """Yield the URL of a new, empty database of the same kind as `base_url`."""
    backend = make_url(base_url).get_backend_name() if base_url else "sqlite"
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="needflow-test-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'x.db'}"
    elif backend in ("postgresql", "postgres"):
        assert base_url is not None
        with _postgres_database(base_url) as url:
            yield url
    else:
        raise ValueError(f"unsupported test database {base_url!r}: use sqlite or postgresql")


@contextmanager
def _postgres_database(base_url: str) -> Iterator[str]:
    base = make_url(base_url)
    name = f"needflow_test_{secrets.token_hex(6)}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
