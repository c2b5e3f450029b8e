"""One SQLite writer at a time per process, first come first served.

SQLite lets one connection write at a time. A connection that finds the write lock taken
waits in SQLite's busy handler, which polls: soon after a refusal (1, 2, 5 ms…), then
every 100 ms. Under a steady stream of short write transactions — a worker's activities
and the API's requests, in one process, each transaction holding the lock across event
loop turns — a writer that has waited a while polls least often and loses to every newer
one: an import's insert was seen waiting 2 s per transaction, 15 s for a small book.

So, on SQLite, a transaction's first write statement first waits its turn at this
process's gate (an `asyncio.Lock`, which is FIFO), and the turn passes on once the
transaction has committed or rolled back (after SQLite's COMMIT returns, not before: the
next holder then reads what this one wrote). A read `FOR UPDATE` (a clause SQLite's SQL
has not) takes the turn too: code that locks a row to decide what to write, such as an
activity's attempt that timed out and runs on beside its retry, then decides with no
other writer of this process between its read and its commit, as a PostgreSQL row lock
would have it. Writers of one process queue in order; the busy handler
only arbitrates between processes (`make run`'s API and worker), where two queues meet.
Reads never queue: WAL lets them run beside the writer.

A turn waits at most `WAIT_SECONDS`, SQLite's own busy timeout, and then fails as SQLite
would ("database is locked"): a coroutine that writes in a second transaction while its
first still holds the lock fails as before, instead of waiting for itself for ever.

PostgreSQL has row locks and needs none of this: `install` is only called for SQLite.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

#: The longest a write waits for its turn: SQLite's busy timeout (store/db.py's pragma).
WAIT_SECONDS = 10.0

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_HOLDS = "needflow_write_gate"

#: One lock per event loop and database file: tests run an API and a worker, each with its
#: own engine, on one loop against one file; a lock belongs to the loop it was made on.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _gate(database: str) -> asyncio.Lock:
    per_loop = _gates.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(database, asyncio.Lock())


def _is_write(statement: str) -> bool:
    return statement.lstrip()[:7].upper().startswith(_WRITES)


def _locks(context: Any) -> bool:
    """Whether the statement is a SELECT … FOR UPDATE (compiled without the clause here)."""
    statement = getattr(getattr(context, "compiled", None), "statement", None)
    return getattr(statement, "_for_update_arg", None) is not None


def _info_of(connection: Any) -> dict | None:
    """The `info` a pooled connection shares with its Connection; None for the pool's own
    reset, handed a bare connection (the `checkin` event releases that one)."""
    try:
        return connection.info
    except (AttributeError, NotImplementedError):
        return None


def _release(info: dict | None) -> None:
    gate = info.pop(_HOLDS, None) if info is not None else None
    if gate is not None:
        gate.release()


async def _take(gate: asyncio.Lock, wait: float) -> None:
    try:
        await asyncio.wait_for(gate.acquire(), wait)
    except TimeoutError:
        raise OperationalError(
            "write gate", None, Exception(f"database is locked (no turn to write within {wait:g} s)")
        ) from None


def install(engine: AsyncEngine, wait: float = WAIT_SECONDS) -> None:
    """Queue `engine`'s write transactions behind this process's other writers to the
    same database (module docstring)."""
    database = str(engine.url.database)

    def before_cursor_execute(conn: Connection, _c: Any, statement: str, _p: Any, context: Any, _m: bool) -> None:
        if _HOLDS in conn.info or not (_is_write(statement) or _locks(context)):
            return
        gate = _gate(database)
        await_only(_take(gate, wait))  # runs in SQLAlchemy's greenlet, on the event loop
        conn.info[_HOLDS] = gate

    # The turn passes on once the DBAPI's commit or rollback has returned: SQLAlchemy's
    # `commit` event comes before it. The pooled connection they are given shares its
    # `info` with the Connection's.
    dialect = engine.sync_engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            _release(_info_of(dbapi_connection))

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            _release(_info_of(dbapi_connection))

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    def checkin(_dbapi: Any, record: Any) -> None:
        # A connection back in the pool has ended its transaction, whichever way (the same
        # `info` as the Connection's): never leave the gate shut behind it.
        _release(record.info)

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    event.listen(engine.sync_engine.pool, "checkin", checkin)
