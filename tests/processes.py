"""needflow as separate processes, for tests that need real ones (a worker to SIGKILL):
a Temporal dev server, workers (`python worker.py`) and API processes (uvicorn), started
the way devstack starts them, on free ports, with the environment a deployment gives
them and nothing of the developer's own NEEDFLOW_* variables.

The children are devstack's (`devstack/children.py`): each one's output is kept in
<log_dir>/<name>.log, each runs in its own session and gets SIGTERM if the test process
dies. `ProcessStack.stop()` stops them in reverse order (SIGTERM, then SIGKILL).

For the fault tests (tests/faults/): a dev server that keeps its state in a file, so it
can be restarted (`start_temporal(db_filename=...)`, `restart_temporal`), `kill` for a
child killed on purpose, and `PrivatePostgres`, a PostgreSQL cluster of the test's own
that it can stop and start (never the machine's shared one).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from temporalio.client import Client

from devstack.children import STOP_TIMEOUT, Child, Children
from devstack.stack import http_ok, port_open
from devstack.temporal import register_search_attributes, search_attribute_args, temporal_cli
from store.db import make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from tests.helpers import TEST_CODEC_KEYS, IsolatedSettings
from workflows import TASK_QUEUE
from workflows.client import DATA_CONVERTER

#: Variables a developer's shell may hold that would change what a child process does.
_OWN_VARIABLES = ("NEEDFLOW_", "DOCUSIGN_", "OTEL_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def identity(pid: int) -> str:
    """The Temporal identity a process's client reports (the SDK's default: pid@host):
    what histories record as the worker that took a task."""
    return f"{pid}@{socket.gethostname()}"


def scrape(url: str) -> dict[str, float]:
    """A Prometheus /metrics page as {'name{labels}': value}; empty when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{.*\}})?$")
    total = 0.0
    for key, value in samples.items():
        if pattern.match(key) and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


@dataclass
class Worker:
    """A worker process, with the metrics port that shows what it has in hand."""

    name: str
    child: Child
    metrics_url: str

    @property
    def identity(self) -> str:
        return identity(self.child.proc.pid)


def in_hand(worker: Worker) -> dict[str, float]:
    """What a worker is doing, by its metrics: task slots in use, tasks done."""
    samples = scrape(worker.metrics_url)
    return {
        "workflow_slots": metric_sum(samples, "temporal_worker_task_slots_used", worker_type="WorkflowWorker"),
        "activity_slots": metric_sum(samples, "temporal_worker_task_slots_used", worker_type="ActivityWorker"),
        "workflow_tasks_done": metric_sum(samples, "temporal_workflow_task_execution_latency_count"),
        "activities_done": metric_sum(samples, "temporal_activity_execution_latency_count"),
        "local_activity_slots": metric_sum(
            samples, "temporal_worker_task_slots_used", worker_type="LocalActivityWorker"
        ),
    }


async def busiest(workers: list[Worker], seconds: float) -> tuple[Worker, dict[str, float]]:
    """The worker with the most in hand (by its metrics: activity slots, then workflow
    slots), one with an activity in hand if any has one within `seconds`: killed then, its
    write may be done or not, and either way a retry must not write it twice."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while True:
        seen = await asyncio.gather(*(asyncio.to_thread(in_hand, w) for w in workers))
        worker, now = max(
            zip(workers, seen, strict=True),
            key=lambda ws: (ws[1]["activity_slots"] + ws[1]["local_activity_slots"], ws[1]["workflow_slots"]),
        )
        if now["activity_slots"] + now["local_activity_slots"] > 0 or loop.time() > give_up:
            return worker, now
        await asyncio.sleep(0.02)


def polling(worker: Worker) -> bool:
    """The worker polls needflow's task queue for workflow tasks and for activities (by its
    own metrics: the server lists a poller only once it polled the root partition)."""
    samples = scrape(worker.metrics_url)
    return all(
        metric_sum(samples, "temporal_num_pollers", poller_type=kind, task_queue=TASK_QUEUE) > 0
        for kind in ("workflow_task", "activity_task")
    )


@dataclass
class ApiProcess:
    name: str
    port: int
    child: Child

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Serving:
    """Two workers and two API processes on one store, serving (`serve_two_of_each`)."""

    workers: list[Worker]
    apis: list[ApiProcess]
    client: Client
    #: An API key with every scope.
    key: str
    #: Where signing links point: the first API.
    public_url: str


class ProcessStack:
    """The children of one test, and the configuration they share."""

    def __init__(self, log_dir: Path, database_url: str) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.children = Children()
        self.temporal_address = ""
        self._temporal_argv: list[str] = []
        self.temporal: Child | None = None
        self.data_dir = log_dir / "data"
        self.data_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ Temporal

    def start_temporal(self, db_filename: Path | None = None) -> str:
        """A headless dev server on a free port, needflow's search attributes given on its
        command line as `make run` gives them; in memory (nothing outlives the test), or
        keeping its state in `db_filename` as `make run` does, so that it can be restarted
        (`restart_temporal`)."""
        port = free_port()
        self._temporal_argv = [
            temporal_cli(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--log-level", "warn",
            *(["--db-filename", str(db_filename)] if db_filename else []),
            *search_attribute_args(),
        ]  # fmt: skip
        self.temporal = self.children.start(
            "temporal", self._temporal_argv, self.environment(), self.log_dir, echo=False
        )
        self.temporal_address = f"127.0.0.1:{port}"
        return self.temporal_address

    async def restart_temporal(self, how: signal.Signals) -> None:
        """Stop the dev server with `how` (SIGTERM: it shuts down; SIGKILL: it dies), then
        start it again on the same port and file, and wait until it serves again."""
        assert self.temporal is not None and "--db-filename" in self._temporal_argv, (
            "an in-memory server has no restart"
        )
        await self.kill(self.temporal, how)
        self.temporal = self.children.start(
            "temporal", self._temporal_argv, self.environment(), self.log_dir, echo=False
        )
        await self.temporal_ready()

    async def temporal_ready(self, seconds: float = 60.0) -> None:
        """Wait for the frontend, then register the search attributes as devstack does after
        every start (idempotent; retried while the server is still coming up)."""
        host, port = self.temporal_address.split(":")
        await self.wait_until("the Temporal frontend", lambda: port_open(host, int(port)), seconds)
        settings = IsolatedSettings(temporal_address=self.temporal_address)
        await asyncio.to_thread(register_search_attributes, settings, seconds)

    # ------------------------------------------------------------------ needflow

    def environment(self, **variables: str) -> dict[str, str]:
        """This process's environment minus needflow's own variables, plus the deployment's
        shared configuration (docs/deployment.md) and these."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES) and k != "DATABASE_URL"}
        env.update(
            DATABASE_URL=self.database_url,
            NEEDFLOW_CODEC_KEYS=TEST_CODEC_KEYS,
            NEEDFLOW_DATA_DIR=str(self.data_dir),
            NEEDFLOW_NAMESPACE="default",
            PYTHONUNBUFFERED="1",
        )
        if self.temporal_address:
            env["NEEDFLOW_TEMPORAL_ADDRESS"] = self.temporal_address
        env.update(variables)
        return env

    def start_worker(self, name: str, **variables: str) -> Child:
        """`python worker.py`, as devstack runs it."""
        return self.children.start(
            name, [sys.executable, "worker.py"], self.environment(**variables), self.log_dir, echo=False
        )

    def start_api(self, name: str, port: int, **variables: str) -> Child:
        """The API under uvicorn, as devstack runs it, on 127.0.0.1:`port`."""
        argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        env = self.environment(NEEDFLOW_API_HOST="127.0.0.1", NEEDFLOW_API_PORT=str(port), **variables)
        return self.children.start(name, argv, env, self.log_dir, echo=False)

    def start_metered_worker(self, name: str, public_url: str) -> Worker:
        """A worker with its metrics on a free port (`in_hand`, `polling`), its signing links
        pointing at `public_url` (the APIs' address)."""
        port = free_port()
        child = self.start_worker(name, NEEDFLOW_METRICS_PORT=str(port), NEEDFLOW_PUBLIC_BASE_URL=public_url)
        return Worker(name, child, f"http://127.0.0.1:{port}/metrics")

    def start_api_process(self, name: str, port: int, public_url: str) -> ApiProcess:
        return ApiProcess(name, port, self.start_api(name, port, NEEDFLOW_PUBLIC_BASE_URL=public_url))

    async def serve_two_of_each(self, key_name: str) -> Serving:
        """Migrate the store, register an API key with every scope, and, once the dev server
        (`start_temporal`) is ready, start two metered workers and two API processes;
        returns when all four serve."""
        await asyncio.to_thread(upgrade, self.database_url)  # while the server comes up
        engine = make_sync_engine(self.database_url)
        key = register_api_key(engine, key_name, ALL_SCOPES)
        engine.dispose()
        await self.temporal_ready()
        ports = [free_port(), free_port()]
        public = f"http://127.0.0.1:{ports[0]}"
        workers = [self.start_metered_worker(f"worker-{n}", public) for n in (1, 2)]
        apis = [self.start_api_process(f"api-{n}", port, public) for n, port in enumerate(ports, start=1)]
        client = await Client.connect(self.temporal_address, data_converter=DATA_CONVERTER)
        await self.serving(workers, apis)
        return Serving(workers, apis, client, key, public)

    async def serving(self, workers: list[Worker], apis: list[ApiProcess], seconds: float = 60.0) -> None:
        """Wait until every API answers /healthz and every worker polls the task queue."""
        for api in apis:
            await self.wait_until(f"{api.url}/healthz", lambda u=api.url: http_ok(f"{u}/healthz"), seconds)
        for w in workers:
            await self.wait_until(f"{w.name} polling", lambda w=w: polling(w), seconds)

    async def kill(self, child: Child, how: signal.Signals = signal.SIGKILL) -> None:
        """End a child on purpose (`end`); it is no longer one of the running children, so
        `check_alive` does not take its end for a failure."""
        await end(child, how)
        if child in self.children.running:
            self.children.running.remove(child)

    # ------------------------------------------------------------------ waiting and stopping

    async def wait_until(self, what: str, check: Callable[[], bool], seconds: float) -> None:
        """Poll the (blocking) `check` until true; fail naming `what` and the log of a child
        that died meanwhile, or after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not await asyncio.to_thread(check):
            self.check_alive(what)
            if loop.time() > deadline:
                raise AssertionError(f"{what}: not within {seconds:g} s (logs in {self.log_dir})")
            await asyncio.sleep(0.2)

    def check_alive(self, waiting_for: str) -> None:
        """Fail, with its last lines, if a child has exited (none should on its own)."""
        for child in self.children.running:
            if child.poll() is not None:
                raise AssertionError(
                    f"{child.name} exited with code {child.poll()} while waiting for {waiting_for}; "
                    f"see {child.log_path}:\n{child.last_lines()}"
                )

    def stop(self) -> None:
        """Stop every child still running, in reverse order; a killed one is reaped."""
        self.children.stop_all()


async def end(child: Child, how: signal.Signals) -> None:
    """Send `how` to a child and wait for it to exit; one still running STOP_TIMEOUT later
    gets SIGKILL."""
    if child.poll() is None:
        os.kill(child.proc.pid, how)
        try:
            await asyncio.to_thread(child.proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            await asyncio.to_thread(child.proc.wait)


# ---------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """Where PostgreSQL's server executables are (initdb, postgres): on PATH, else the
    newest /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent

    def version(initdb: Path) -> list[int]:
        return [int(part) for part in initdb.parts[-3].split(".") if part.isdigit()]

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version, reverse=True)
    return versions[0].parent if versions else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, in a temp dir of its own (not pytest's
    tmp_path, whose parents only root may enter, and the server runs as `postgres`), on 127.0.0.1 and a free port:
    one the test may stop and start (`stop`, `start`), unlike the machine's shared server.
    Run as root, the server runs as the `postgres` user (PostgreSQL refuses root), through
    `setpriv`, which execs it (no process in between) and gives it SIGINT (a fast
    shutdown) if the test process dies. `destroy()` stops it and removes its files."""

    def __init__(self, log_dir: Path, bin_dir: Path) -> None:
        self.log_dir = log_dir
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="needflow-faults-pg-"))
        self.data = self.root / "data"
        self.child: Child | None = None
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            assert setpriv, "running as root: PostgreSQL must run as `postgres`, through setpriv (util-linux)"
            self._as_postgres = [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups"]
            shutil.chown(self.root, "postgres", "postgres")
        self.url = f"postgresql://needflow@127.0.0.1:{self.port}/needflow"

    async def create(self) -> None:
        """initdb (trust on the loopback only, no fsync: the data is thrown away), start,
        and make the `needflow` database."""
        initdb = [*self._as_postgres, str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "needflow",
                  "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, initdb, capture_output=True, text=True, check=False, cwd=self.root
        )
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"
        await self.start()
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE needflow")

    async def start(self, seconds: float = 60.0) -> None:
        """Start the server (in the foreground, a child of the test's main thread, whose end
        the parent-death signal follows) and wait until it accepts connections (after a
        crash, once its recovery is done)."""
        assert self.child is None or self.child.poll() is not None, "already running"
        pdeathsig = ["--pdeathsig", "SIGINT"] if self._as_postgres else []
        argv = [
            *self._as_postgres, *pdeathsig, str(self.bin_dir / "postgres"),
            "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300",
        ]  # fmt: skip
        # Not one of a ProcessStack's children: its stop() stops those (clients of this
        # server among them) with SIGTERM, which a PostgreSQL server takes as a "smart"
        # shutdown, waiting for its clients; `destroy` stops it fast, after them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.child = Child("postgres", argv, env, self.log_dir, echo=False)
        deadline = time.monotonic() + seconds
        while not await asyncio.to_thread(self.accepting):
            if self.child.poll() is not None:
                raise AssertionError(f"postgres exited ({self.child.poll()}):\n{self.child.last_lines()}")
            assert time.monotonic() < deadline, f"postgres not accepting within {seconds:g} s"
            await asyncio.sleep(0.1)

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (SIGINT: clients disconnected, a clean shutdown) or
        `immediate` (SIGQUIT: every process quits at once, as in a crash; the next start
        recovers from the WAL)."""
        if self.child is not None:
            await end(self.child, signal.SIGINT if mode == "fast" else signal.SIGQUIT)

    def accepting(self) -> bool:
        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        """Stop the server fast, immediately if it will not, killed if it will not even
        then, and remove its files."""
        try:
            if self.child is not None and self.child.poll() is None:
                for how in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                    self.child.proc.send_signal(how)
                    try:
                        self.child.proc.wait(timeout=STOP_TIMEOUT)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _dsn(self, database: str) -> str:
        return f"postgresql://needflow@127.0.0.1:{self.port}/{database}"
