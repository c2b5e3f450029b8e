"""One SQLite writer at a time per process, first come first served.

SQLite lets one connection write at a time. A connection that finds the write lock taken
waits in SQLite's busy handler, which polls: soon after a refusal (1, 2, 5 ms…), then
every 100 ms. Under a steady stream of short write transactions — a worker's activities
and the API's requests, in one process, each transaction holding the lock across event
loop turns — a writer that has waited a while polls least often and loses to every newer
one: an import's insert was seen waiting 2 s per transaction, 15 s for a small book.

So, on SQLite, a transaction's first write statement first waits its turn at this
process's gate (an `asyncio.Lock`, which is FIFO), and the turn passes on when the
transaction commits or rolls back. Writers of one process queue in order; the busy handler
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

    def before_cursor_execute(conn: Connection, _c: Any, statement: str, *_: Any) -> None:
        if _HOLDS in conn.info or not _is_write(statement):
            return
        gate = _gate(database)
        await_only(_take(gate, wait))  # runs in SQLAlchemy's greenlet, on the event loop
        conn.info[_HOLDS] = gate

    def end(conn: Connection) -> None:
        gate = conn.info.pop(_HOLDS, None)
        if gate is not None:
            gate.release()

    def checkin(_dbapi: Any, record: Any) -> None:
        # A connection back in the pool has ended its transaction, whichever way (the same
        # `info` as the Connection's): never leave the gate shut behind it.
        gate = record.info.pop(_HOLDS, None)
        if gate is not None:
            gate.release()

    sync = engine.sync_engine
    event.listen(sync, "before_cursor_execute", before_cursor_execute)
    event.listen(sync, "commit", end)
    event.listen(sync, "rollback", end)
    event.listen(sync.pool, "checkin", checkin)
