"""SQLite's writers take turns in order within a process (store/write_gate.py).

The situation that made an import wait 15 s: many short write transactions that hold the
lock across event loop turns (an API and a worker sharing one process and one file),
and a writer that has waited a while losing every poll to newer ones. Here SQLite's busy
timeout is cut to 300 ms so that starvation shows as "database is locked" rather than as
a slow test: without the gate, writers fail; with it, every write lands.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from store import write_gate
from store.db import make_async_engine, make_session_factory

WRITERS = 24
TRANSACTIONS = 15


def _short_busy_timeout(engine: AsyncEngine) -> None:
    def connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=300")
        cur.close()

    event.listen(engine.sync_engine, "connect", connect)


async def _stream(engine: AsyncEngine, who: int) -> None:
    sessions = make_session_factory(engine)
    for n in range(TRANSACTIONS):
        async with sessions.begin() as session:
            await session.execute(text("INSERT INTO t (who, n) VALUES (:who, :n)"), {"who": who, "n": n})
            await asyncio.sleep(0.002)  # the lock is held across event loop turns, as in the app
            await session.execute(text("UPDATE t SET n = n WHERE who = :who"), {"who": who})


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one()


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
async def test_writers_of_one_process_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated: bool) -> None:
    if not gated:
        monkeypatch.setattr(write_gate, "install", lambda engine, wait=0: None)
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    # Two engines on one file, as the API and the worker have in the test session.
    engines = [make_async_engine(url), make_async_engine(url)]
    for engine in engines:
        _short_busy_timeout(engine)
    try:
        async with engines[0].begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who INTEGER, n INTEGER)"))
        results = await asyncio.gather(*(_stream(engines[w % 2], w) for w in range(WRITERS)), return_exceptions=True)
        locked = [r for r in results if isinstance(r, OperationalError)]
        others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, OperationalError)]
        assert not others, others
        written = await _count(engines[0])
        if gated:
            assert locked == [] and written == WRITERS * TRANSACTIONS
        else:
            # The control: the same load without the gate starves writers past the timeout
            # (if this ever passes, the test above no longer shows what the gate is for).
            assert locked and "database is locked" in str(locked[0])
            assert written < WRITERS * TRANSACTIONS
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_second_write_transaction_behind_its_own_first_fails_rather_than_hangs(tmp_path: Path) -> None:
    """A coroutine that writes in a new transaction while its own first one holds the lock
    could never get its turn: it fails as SQLite itself would, after the gate's wait."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'self.db'}")
    write_gate.install(engine, wait=0.3)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        sessions = make_session_factory(engine)
        async with sessions.begin() as first:
            await first.execute(text("INSERT INTO t DEFAULT VALUES"))
            with pytest.raises(OperationalError, match="database is locked"):
                async with sessions.begin() as second:
                    await second.execute(text("INSERT INTO t DEFAULT VALUES"))
        assert await _count(engine) == 1
    finally:
        await engine.dispose()


async def test_a_read_for_update_waits_for_the_writer_ahead_of_it(tmp_path: Path) -> None:
    """A read `FOR UPDATE` (an attempt deciding what to write) takes this process's turn
    as a write does: it waits for the transaction writing ahead of it to commit and reads
    what that one wrote, as a PostgreSQL row lock would have it wait."""
    engine = make_async_engine(f"sqlite:///{tmp_path / 'locks.db'}")
    t = Table("t", MetaData(), Column("id", Integer, primary_key=True))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        sessions = make_session_factory(engine)
        written = asyncio.Event()

        async def writer() -> None:
            async with sessions.begin() as session:
                await session.execute(text("INSERT INTO t DEFAULT VALUES"))
                written.set()
                await asyncio.sleep(0.2)  # still uncommitted

        async def decider() -> int:
            await written.wait()
            async with sessions.begin() as session:
                return len((await session.execute(select(t.c.id).with_for_update())).all())

        _, seen = await asyncio.gather(writer(), decider())
        assert seen == 1  # 0: a decision taken beside an uncommitted write
    finally:
        await engine.dispose()
