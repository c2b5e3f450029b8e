"""Engine and session factories for one DATABASE_URL, sync (migrations) and async (the rest)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from store import write_gate


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
    engine = create_async_engine(async_url(url), pool_pre_ping=not url.startswith("sqlite"), hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        write_gate.install(engine)  # this process's writers take turns, in order
    return engine


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


async def insert_if_missing(session: AsyncSession, model: Any, **values: Any) -> bool:
    """INSERT a row unless its key is there already (ON CONFLICT DO NOTHING), on either
    database: for a row that must exist before it is locked, made by whichever of two
    racing transactions comes first, or a row written once however often its write is
    retried, in one statement. Returns whether this call inserted it (`preserve_rowcount`:
    SQLAlchemy keeps an INSERT's row count only when asked, and on PostgreSQL answered -1,
    read as "inserted", before it was).

    The statement is built once per table and database and the values travel as its
    parameters: building `insert(...).values(**values)` afresh cost more than the INSERT
    itself on every call (a referral's routing makes two or three)."""
    dialect = session.bind.dialect.name
    statement = _INSERT_IF_MISSING.get((dialect, model))
    if statement is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = _INSERT_IF_MISSING[(dialect, model)] = (
            insert(model.__table__).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
        )
    result = await session.execute(statement, values)
    return bool(result.rowcount)


_INSERT_IF_MISSING: dict[tuple[str, Any], Any] = {}


#: How long a loop of write transactions pauses between them on a database with one
#: writer at a time (SQLite): longer than a waiting writer's longest busy poll (100 ms),
#: so that back-to-back batches never starve it past its busy timeout. None elsewhere.
SQLITE_WRITER_PAUSE = 0.15


def writer_pause(sessions: async_sessionmaker) -> float | None:
    """The pause a batch loop owes other writers between its transactions (see above)."""
    return SQLITE_WRITER_PAUSE if sessions.kw["bind"].dialect.name == "sqlite" else None
