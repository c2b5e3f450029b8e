"""SQLite's one-trip cursor (store/sqlite_driver.py) answers as SQLAlchemy's own aiosqlite
adapter does, in one trip to the connection's thread per statement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from store.db import make_async_engine, make_session_factory
from store.sqlite_driver import OneTripCursor

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("n", Integer, nullable=False),
)


async def _script(engine: AsyncEngine) -> list[Any]:
    """What a caller sees of each kind of statement needflow runs: rows, RETURNING, row
    counts (with and without ON CONFLICT), executemany, the new row's id, a refused row,
    and the connection working on after it."""
    seen: list[Any] = []
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with engine.begin() as conn:
        made = await conn.execute(insert(things).values(name="a", n=1))
        seen.append(("inserted id", made.inserted_primary_key))
        many = await conn.execute(insert(things), [{"name": f"m{i}", "n": i} for i in range(5)])
        seen.append(("executemany rowcount", many.rowcount))
        returned = await conn.execute(insert(things).values(name="r", n=7).returning(things.c.id, things.c.n))
        seen.append(("returning", returned.all(), returned.rowcount))
        many_returned = await conn.execute(
            update(things).where(things.c.n > 2).values(n=things.c.n + 1).returning(things.c.id)
        )
        seen.append(("update returning", sorted(many_returned.scalars()), many_returned.rowcount))
        skip = sqlite_insert(things).values(name="a", n=9).on_conflict_do_nothing()
        seen.append(
            ("on conflict, taken", (await conn.execute(skip, execution_options={"preserve_rowcount": True})).rowcount)
        )
        seen.append(
            ("update rowcount", (await conn.execute(update(things).where(things.c.n < 3).values(n=0))).rowcount)
        )
        seen.append(("rows", (await conn.execute(select(things.c.name, things.c.n).order_by(things.c.id))).all()))
        seen.append(("none", (await conn.execute(select(things.c.id).where(things.c.name == "zz"))).first()))
        seen.append(("text scalar", (await conn.execute(text("SELECT count(*) FROM things"))).scalar_one()))
    with pytest.raises(IntegrityError) as refused:
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="b", n=1))
            await conn.execute(insert(things).values(name="b", n=2))
    seen.append(("refused", type(refused.value.orig).__name__, "UNIQUE" in str(refused.value.orig)))
    sessions = make_session_factory(engine)
    async with sessions() as session:
        seen.append(("after", await session.scalar(select(func.count()).select_from(things))))
        # A stream takes SQLAlchemy's own server-side cursor: still answered alike.
        stream = await session.stream(select(things.c.name).order_by(things.c.id).limit(3))
        seen.append(("streamed", [r async for r in stream.scalars()]))
    return seen


async def test_it_answers_as_sqlalchemys_own_adapter(tmp_path: Path) -> None:
    stock = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}")
    ours = make_async_engine(f"sqlite:///{tmp_path / 'ours.db'}")
    try:
        async with ours.connect() as conn:
            raw = await conn.get_raw_connection()
            assert type(raw.dbapi_connection.cursor()) is OneTripCursor  # the engine uses it
        expected, got = await _script(stock), await _script(ours)
        assert got == expected
        assert (
            "refused",
            "IntegrityError",
            True,
        ) in got  # a refused row raises as before, and the rollback kept nothing
        assert ("after", 7) in got
    finally:
        await stock.dispose()
        await ours.dispose()


async def test_a_statement_is_one_trip_to_the_connections_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of the cursor: SQLAlchemy's adapter made four trips (cursor, execute,
    fetch, close) per statement; each costs the event loop a wake-up."""
    engine = make_async_engine(f"sqlite:///{tmp_path / 'trips.db'}")
    trips = 0
    queue = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return await queue(self, fn, *args, **kwargs)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(things).values(name="a", n=1))
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            for _ in range(10):
                assert (await conn.execute(select(things.c.n).where(things.c.name == "a"))).scalar_one() == 1
            await conn.execute(update(things).values(n=2))
        assert trips == 11 + 1  # ten reads, a write, the commit (and no rollback: nothing is open once committed)
        async with engine.connect() as conn:
            await conn.execute(select(things.c.n))
        assert trips == 12 + 1  # a read alone opens no transaction: the pool's rollback makes no trip
    finally:
        await engine.dispose()
