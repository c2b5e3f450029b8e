"""SQLite under asyncio: one trip to the connection's thread per statement.

aiosqlite runs each SQLite connection in a thread of its own; every call on it is a trip
there and back (queued, run, its answer handed back to the event loop). SQLAlchemy's
aiosqlite adapter makes four such trips per statement: make a cursor, execute, fetch the
rows (or close), and close. Each trip costs the event loop a wake-up and the statement a
few tens of microseconds of waiting, whatever the statement does; with the dozens of
short statements an activity or a request runs, that was a sixth of a routing decision's
time (bench/bench_referral_service.py: 7.8–8.2 ms → 6.5 ms per new referral on the same
machine).

Here the cursor runs a whole statement in one trip, in the connection's thread: make a
sqlite3 cursor, execute, fetch every row, note the description, row count and last row
id, close. A commit or rollback with no transaction open (the pool's rollback of every
connection it takes back, even one just committed) makes no trip. Everything else is
SQLAlchemy's own aiosqlite dialect and adapter, subclassed, not copied: the connection,
the cursor's rows and fetch methods and execute lock, the pool, errors (sqlite3's, as
aiosqlite raises them), the write gate's hooks (store/write_gate.py). Results were
buffered whole before too (the adapter fetched every row at once), so memory use is the
same.

What it relies on beyond aiosqlite's documented API, as SQLAlchemy's adapter itself does
(it queues on `Connection._tx`): `Connection._execute(fn, *args)`, which runs `fn` in
the connection's thread and awaits its answer, and `Connection._conn`, the sqlite3
connection. pyproject.toml bounds aiosqlite to the releases where those hold, and
tests/test_sqlite_driver.py fails if either moves.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

Row = tuple[Any, ...]
_Answer = tuple[Any, int, int | None, Sequence[Row]]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Answer:
    """One statement, start to end, in the connection's own thread."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        # Fetched before the row count is read: sqlite3 counts a RETURNING statement's
        # rows only as they are fetched.
        rows = cursor.fetchall() if description else ()
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class _Answered:
    """What a statement left behind, read through the adapter cursor's properties
    (`description`, `rowcount`, `lastrowid`, `arraysize`): nothing stays open in SQLite."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, description: Any = None, rowcount: int = -1, lastrowid: int | None = None) -> None:
        self.description, self.rowcount, self.lastrowid, self.arraysize = description, rowcount, lastrowid, 1

    def close(self) -> None:
        """Nothing to close: the statement's cursor was closed in its trip."""


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor, each statement in one trip: the trip replaces the
    adapter's own (cursor, execute, fetch, close); the rows, the fetch methods, the
    errors and the execute lock are the adapter's."""

    __slots__ = ()
    _awaitable_cursor_close = False  # `close` is the no-op above, called in place

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # Not the adapter's __init__: it makes a sqlite3 cursor up front, in a trip.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = _Answered()  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._trip(operation, seq_of_parameters, many=True)

    async def _trip(self, operation: str, parameters: Any, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection
        async with self._adapt_connection._execute_mutex:
            description, rowcount, lastrowid, rows = await connection._execute(
                _run, connection._conn, operation, parameters, many
            )
        self._cursor = _Answered(description, rowcount, lastrowid)  # type: ignore[assignment]
        self._rows = collections.deque(rows)


class _Connection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted connection, with the one-trip cursor, and no trip for a commit
    or a rollback with no transaction open: the pool rolls back every connection it takes
    back, after every commit too. sqlite3 itself does nothing then (it asks SQLite's
    autocommit flag, as `in_transaction` does), so skipping the trip changes nothing else;
    the flag is read while the connection's thread is idle, between this connection's
    statements."""

    __slots__ = ()
    _cursor_cls = OneTripCursor  # type: ignore[assignment]

    def _in_transaction(self) -> bool:
        connection: aiosqlite.Connection = self._connection
        try:
            return connection._connection is not None and connection.in_transaction
        except Exception:  # noqa: BLE001 - closed meanwhile: the trip raises the adapter's own error
            return True

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()


class _Dbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        adapted = super().connect(*arg, **kw)
        return _Connection(self, adapted._connection)


def dbapi() -> AsyncAdapt_aiosqlite_dbapi:
    """The DBAPI module for `create_async_engine(..., module=dbapi())` on an SQLite URL."""
    return _Dbapi(aiosqlite, sqlite3)
