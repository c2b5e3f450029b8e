"""Engine and session factories for one DATABASE_URL, sync (migrations) and async (the
rest), and statements built once per database (`per_database`, `insert_if_missing`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from store import sqlite_driver, write_gate


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"DATABASE_URL {url!r} is not a URL")
    return scheme.split("+")[0], rest


def sync_url(url: str) -> str:
    dialect, rest = _split(url)
    if dialect in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if dialect == "sqlite":
        return f"sqlite://{rest}"
    raise ValueError(f"unsupported database {dialect!r}: use sqlite or postgresql")


def async_url(url: str) -> str:
    dialect, rest = _split(url)
    if dialect in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if dialect == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(f"unsupported database {dialect!r}: use sqlite or postgresql")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    # WAL lets the API read while the worker writes; busy_timeout waits out a writer.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_sync_engine(url: str) -> Engine:
    # hide_parameters (both engines): a database error's message, logged and carried in an
    # activity's failure, names the statement, never the values (a customer's name, e-mail).
    engine = create_engine(sync_url(url), hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_async_engine(url: str) -> AsyncEngine:
    # A server connection may have been dropped while pooled: ping it on checkout. An
    # embedded SQLite file cannot drop, so it skips the extra round trip.
    # SQLite runs each statement in one trip to its connection's thread (store/sqlite_driver.py).
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(
        async_url(url),
        pool_pre_ping=not sqlite,
        hide_parameters=True,
        **({"module": sqlite_driver.dbapi()} if sqlite else {}),
    )
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        write_gate.install(engine)  # this process's writers take turns, in order
    return engine


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


#: An INSERT for a table, on one database (its dialect's, which speaks ON CONFLICT).
InsertFor = Callable[[Table], Insert]
S = TypeVar("S")


def per_database(build: Callable[[InsertFor], S]) -> dict[str, S]:
    """A statement built once for each database needflow runs on: `build(insert)` with
    that database's INSERT (both speak `ON CONFLICT`). Pick it with `for_session`.
    Statements built once and given their values as parameters: building one afresh
    costs more than running it (bench/README.md, routing)."""
    return {"postgresql": build(pg_insert), "sqlite": build(sqlite_insert)}


def for_session(statements: dict[str, S], session: AsyncSession) -> S:
    return statements[session.bind.dialect.name]


@functools.cache
def _insert_if_missing(table: Table) -> dict[str, Insert]:
    # preserve_rowcount: SQLAlchemy keeps an INSERT's row count only when asked; without
    # it PostgreSQL answered -1, read as "inserted".
    return per_database(lambda insert: insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True))


async def insert_if_missing(session: AsyncSession, model: Any, **values: Any) -> bool:
    """INSERT a row unless its key is there already (ON CONFLICT DO NOTHING), on either
    database: a row written once however often its write is retried, or made by
    whichever of two racing transactions comes first, in one statement. Returns whether
    this call inserted it."""
    result = await session.execute(for_session(_insert_if_missing(model.__table__), session), values)
    return bool(result.rowcount)


#: How long a loop of write transactions pauses between them on a database with one
#: writer at a time (SQLite): longer than a waiting writer's longest busy poll (100 ms),
#: so that back-to-back batches never starve it past its busy timeout. None elsewhere.
SQLITE_WRITER_PAUSE = 0.15


def writer_pause(sessions: async_sessionmaker) -> float | None:
    """The pause a batch loop owes other writers between its transactions (see above)."""
    return SQLITE_WRITER_PAUSE if sessions.kw["bind"].dialect.name == "sqlite" else None
