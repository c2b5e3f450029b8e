"""The fault tests' stack (`fault_stack`), their table at the end of the run, and their
place in the suite: too slow for `make test` (minutes each), they run with `make faults`
(`pytest tests/faults`). Collected along with the rest of the suite they are deselected:
they run only when a path inside tests/faults/ is named on the command line."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.faults.stack import ROWS, TABLE, FaultStack, table
from tests.processes import PrivatePostgres, ProcessStack, postgres_bin_dir

HERE = Path(__file__).parent.resolve()


def _asked_for(config: pytest.Config) -> bool:
    """Whether a path inside tests/faults/ was named on the command line."""
    root = Path(config.invocation_params.dir)
    for arg in config.invocation_params.args:
        path = (root / str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    mine = [item for item in items if HERE in Path(item.path).resolve().parents]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("fault table")
        terminalreporter.write(table())
        terminalreporter.write_line(f"(also in {TABLE})")


@pytest_asyncio.fixture
async def fault_stack(tmp_path: Path) -> AsyncIterator[FaultStack]:
    """A Temporal dev server on a file, a private PostgreSQL cluster, two workers and two
    APIs, all on 127.0.0.1; everything stopped and removed afterwards, also on failure."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server executables (initdb, postgres) were not found")
    started = time.monotonic()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    postgres = PrivatePostgres(log_dir, bin_dir)
    processes = ProcessStack(log_dir, postgres.url)
    try:
        processes.start_temporal(db_filename=tmp_path / "temporal.db")
        await postgres.create()
        up = await processes.serve_two_of_each("faults")
        print(f"\n[faults] stack up in {time.monotonic() - started:.1f} s; logs in {log_dir}")
        yield FaultStack(processes, postgres, up.client, up.workers, up.apis, up.key, up.public_url)
    finally:
        processes.stop()
        postgres.destroy()
