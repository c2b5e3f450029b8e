"""Lifecycles per second, needflow against the floor Temporal sets (issue 10, item 1).

One command, one run, one Temporal dev server (a SQLite file, as `make run`'s), four
scenarios, each at every concurrency asked for:

  floor     a five-stage workflow on Temporal: an update-with-start, four Updates, five
            no-op activities, through the Python client (bench/_floor.py), with its own
            worker on its own task queue: what Temporal itself costs.
  client    needflow's mortgage lifecycle through the Temporal client, as the API calls
            it but without HTTP: `Starts.open_opportunity`, then the Updates `advance`
            (Searching), `apply_event` (application submitted, approved: the signature
            requested) and `signature_outcome` (signed: Closed Won). The customer and
            need are made beforehand, untimed.
  http      the same over the HTTP API, as a bank's systems drive it: customer, need,
            open, advance to Searching, the two lender events, then the customer signs on
            the local signing page (her link read from the outbox, as the tests do).
  referral  a referral over the HTTP API: create (recorded, scored, routed), accept,
            convert (customer, need and a mortgage opened).
  floor-local  (only when named in --scenarios) the floor with local activities, as
            needflow's store writes are run: the floor of that design.

Every needflow process runs as `make run` runs it: the worker (worker.py's build_worker,
the same process setup as its main) and the API (uvicorn serving api.app:create_app)
each in a process of its own; the floor's worker too. Each gets a task queue of its own,
so a Temporal server given with --temporal may be shared with a running stack. The
database is a fresh SQLite file, migrated (or, with --database-url or DATABASE_URL naming a
PostgreSQL server, a fresh database there, dropped afterwards).

Prints, per scenario and concurrency: lifecycles/s, the ratio to the floor, p50/p99 of a
request to its answer (an update or HTTP request that answers once its checkpoint is
recorded, so readable), history events per lifecycle (and the e-mail sender's), and the
worker's and API's peak RSS during the run; then each step's latency, the CPU each
process spent per lifecycle, and the SQL statements and commits of the worker and the
API per lifecycle. It never asserts a timing. bench/README.md explains each figure and
holds the ones measured.

    .venv/bin/python bench/lifecycle.py                                # make bench's size
    .venv/bin/python bench/lifecycle.py --count 90 --rounds 3 --concurrency 1,10
    .venv/bin/python bench/lifecycle.py --scenarios http --concurrency 10 --profile var/profile
    .venv/bin/python bench/lifecycle.py --temporal 127.0.0.1:7233      # an existing server

--profile DIR samples the worker and the API with py-spy (`.venv/bin/pip install py-spy`)
while `http` runs and writes their stacks and a summary of where the time goes there
(the sampling slows the run down: its figures are not the bench's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = ("floor", "client", "http", "referral")
#: Run only when asked (--scenarios): the floor with local activities.
EXTRA_SCENARIOS = ("floor-local",)
#: What `make bench` runs: about a minute on a 2-core machine, start-up included.
DEFAULT_COUNT = 20
DEFAULT_CONCURRENCY = "1,10"
DEFAULT_WARMUP = 2
#: The longest one request, update or start-up wait may take before the bench fails.
DEADLINE = 60.0
#: Lifecycles of each run whose workflow histories are counted (after the run, untimed).
HISTORY_SAMPLE = 3
KEY_NAME = "bench"
OWNERS = 10
SIGNING_LINK = re.compile(r"https?://\S+/sign/([A-Za-z0-9_\-]+)")


class BenchError(Exception):
    """Something went wrong in the bench itself; printed without a traceback."""


# ================================================================ the child processes


async def _floor_worker(address: str, namespace: str, task_queue: str) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from bench._floor import FloorLifecycle, record_stage

    client = await Client.connect(address, namespace=namespace)
    worker = Worker(client, task_queue=task_queue, workflows=[FloorLifecycle], activities=[record_stage])
    print("READY", flush=True)
    await worker.run()


async def _needflow_worker(task_queue: str) -> None:
    """worker.py's main on another task queue (and without the daily review's schedule,
    which is no part of a lifecycle)."""
    from config import get_settings
    from observability import observe_process
    from worker import build_worker
    from workflows.client import connect

    settings = get_settings()
    observe_process(settings, "worker")
    client = await connect(settings)
    worker = build_worker(client, settings, task_queue)
    print("READY", flush=True)
    await worker.run()


def _api(task_queue: str, port: int) -> None:
    """`uvicorn --factory api.app:create_app`, on another task queue: uvicorn's defaults
    (its access log included), as `make run` has them."""
    import uvicorn

    from api.app import create_app
    from config import get_settings

    uvicorn.run(create_app(get_settings(), task_queue=task_queue), host="127.0.0.1", port=port)


def count_sql(path: str) -> None:
    """In a child: count every SQL statement (by its first word) and every commit of every
    engine of this process; SIGUSR1 writes the counts to `path` (`Proc.sql_counts`)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts: Counter[str] = Counter()

    from temporalio import activity

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts[statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"] += 1
        if activity.in_activity():  # the worker's statements by activity, `@type`
            counts["@" + activity.info().activity_type] += 1

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        counts["COMMIT"] += 1

    def dump(_signum: int, _frame: object) -> None:
        counts["#"] += 1  # which dump this is
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps(counts))
        os.replace(tmp, path)

    signal.signal(signal.SIGUSR1, dump)


def child_main(args: argparse.Namespace) -> None:
    if os.environ.get("BENCH_SQL_COUNTS") and args.role != "floor-worker":
        count_sql(f"{os.environ['BENCH_SQL_COUNTS']}.{args.role}")
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "floor-worker":
            asyncio.run(_floor_worker(args.address, args.namespace, args.task_queue))
        elif args.role == "needflow-worker":
            asyncio.run(_needflow_worker(args.task_queue))
        else:
            _api(args.task_queue, args.port)


# ================================================================ processes and the stack


def _die_with_parent() -> None:  # in the child, before exec (Linux): SIGTERM if the bench dies
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def status_mb(pid: int, field: str) -> float | None:
    """A memory figure of /proc/PID/status (VmRSS: resident now, VmHWM: its peak), MB;
    None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Proc:
    """A child process, its output in <logs>/<name>.log; its CPU and peak RSS from /proc."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        self.pid = self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {what} not within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.1)

    def wait_ready_line(self) -> None:
        self.wait_for("READY", lambda: "READY" in self.log_path.read_text(errors="replace"))

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def reset_peak_rss(self) -> None:
        """Start the peak RSS (VmHWM) afresh: `5` to clear_refs (Linux, own processes)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float | None:
        return status_mb(self.pid, "VmHWM")

    def sql_counts(self, path: Path) -> Counter[str] | None:
        """The child's SQL statement and commit counts so far (`count_sql`), or None."""
        try:
            before = json.loads(path.read_text()).get("#", 0) if path.exists() else 0
            os.kill(self.pid, signal.SIGUSR1)
        except (OSError, ValueError):
            return None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                counts = Counter(json.loads(path.read_text()))
                if counts["#"] > before:
                    return counts
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


@dataclasses.dataclass
class Stack:
    """The Temporal server (started here unless given), the database, needflow's worker
    and API and the floor's worker; what the scenarios need to talk to them."""

    tmp: Path
    address: str
    namespace: str
    database_url: str
    api_url: str
    codec_keys: str
    floor_queue: str
    needflow_queue: str
    procs: dict[str, Proc]
    api_key: str = ""

    def sql_counts_file(self, proc: Proc) -> Path:
        role = {"worker": "needflow-worker", "api": "api"}[proc.name]
        return self.tmp / f"sql-counts.{role}"

    #: What else to undo at the end (a fresh PostgreSQL database is dropped).
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def stop(self) -> None:
        for name in ("api", "worker", "floor-worker", "temporal"):
            if name in self.procs:
                self.procs[name].stop()
        self.cleanup.close()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without needflow's and Temporal's settings (the bench sets its
    own), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEEDFLOW_", "DOCUSIGN_", "OTEL_", "TEMPORAL_")) and k != "DATABASE_URL"
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def settings_given(args: argparse.Namespace) -> dict[str, str]:
    """--setting NAME=VALUE, each a NEEDFLOW_* variable for the worker and the API."""
    given = dict(s.split("=", 1) for s in getattr(args, "setting", None) or [])
    if wrong := [name for name in given if not name.startswith("NEEDFLOW_")]:
        raise BenchError(f"--setting takes NEEDFLOW_* variables, not {', '.join(wrong)}")
    return given


def add_setting_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a NEEDFLOW_* setting for the worker and the API, to compare runs by "
        "(e.g. NEEDFLOW_WORKFLOW_SANDBOX=true)",
    )


def start_stack(args: argparse.Namespace, tmp: Path, extra_env: dict[str, str] | None = None) -> Stack:
    """`extra_env`: more environment for the processes started here (bench/open_many.py
    turns needflow's worker's metrics port on with it); none by default. `args.setting`
    (--setting, each NAME=VALUE) comes last: a setting to compare runs by."""
    from config import Settings
    from devstack.stack import http_ok, port_open
    from devstack.temporal import temporal_command
    from store.db import make_sync_engine
    from store.keys import ALL_SCOPES, register_api_key
    from store.migrate import upgrade
    from workflows.codec import KeyRing

    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, Proc] = {}
    api_port = free_port()
    stack = Stack(
        tmp=tmp,
        address=args.temporal or "",
        namespace=args.namespace,
        database_url=f"sqlite:///{tmp / 'needflow.db'}",
        api_url=f"http://127.0.0.1:{api_port}",
        codec_keys=KeyRing.new_entry("bench"),
        floor_queue=f"bench-floor-{uuid.uuid4().hex[:8]}",
        needflow_queue=f"bench-needflow-{uuid.uuid4().hex[:8]}",
        procs=procs,
    )
    try:
        if not args.temporal:
            port, ui_port = free_port(), free_port()
            settings = Settings(temporal_port=port, ui_port=ui_port, api_port=api_port, namespace=args.namespace)
            # `make run`'s dev server command (devstack/temporal.py): its SQLite file, search
            # attributes and Web UI, on free ports.
            argv = temporal_command(settings, tmp)
            for pragma in args.server_pragma:  # an experiment: the dev server's SQLite
                argv += ["--sqlite-pragma", pragma]
            procs["temporal"] = Proc("temporal", argv, child_env({}), log_dir)
            stack.address = f"127.0.0.1:{port}"
            procs["temporal"].wait_for(f"the frontend on {stack.address}", lambda: port_open("127.0.0.1", port))
        else:  # as `starter.py setup-cluster`: needflow's search attributes, those missing added
            from devstack import StackError
            from devstack.temporal import register_search_attributes

            try:
                register_search_attributes(Settings(temporal_address=args.temporal, namespace=args.namespace))
            except StackError as err:
                raise BenchError(str(err)) from None
        server = args.database_url or os.environ.get("DATABASE_URL")
        if server and not server.startswith("sqlite"):
            from tests.dbutil import fresh_database_url  # as bench_import.py: a new database, dropped after

            stack.database_url = stack.cleanup.enter_context(fresh_database_url(server))
        upgrade(stack.database_url)
        engine = make_sync_engine(stack.database_url)
        try:
            stack.api_key = register_api_key(engine, KEY_NAME, list(ALL_SCOPES))
        finally:
            engine.dispose()
        env = child_env(
            {
                "NEEDFLOW_DATA_DIR": str(tmp),
                "DATABASE_URL": stack.database_url,
                "NEEDFLOW_TEMPORAL_ADDRESS": stack.address,
                "NEEDFLOW_NAMESPACE": stack.namespace,
                "NEEDFLOW_CODEC_KEYS": stack.codec_keys,
                "NEEDFLOW_PUBLIC_BASE_URL": stack.api_url,
                "NEEDFLOW_API_PORT": str(api_port),
                "NEEDFLOW_METRICS_PORT": "off",
                "NEEDFLOW_API_METRICS_PORT": "off",
                "BENCH_SQL_COUNTS": str(tmp / "sql-counts"),
                **(extra_env or {}),
                **settings_given(args),
            }
        )
        me = [sys.executable, str(Path(__file__).resolve())]
        procs["floor-worker"] = Proc(
            "floor-worker",
            [*me, "--role", "floor-worker", "--address", stack.address, "--namespace", stack.namespace,
             "--task-queue", stack.floor_queue],
            env,
            log_dir,
        )  # fmt: skip
        procs["worker"] = Proc(
            "worker", [*me, "--role", "needflow-worker", "--task-queue", stack.needflow_queue], env, log_dir
        )
        procs["api"] = Proc(
            "api", [*me, "--role", "api", "--task-queue", stack.needflow_queue, "--port", str(api_port)], env, log_dir
        )
        procs["floor-worker"].wait_ready_line()
        procs["worker"].wait_ready_line()
        procs["api"].wait_for("/healthz", lambda: http_ok(f"{stack.api_url}/healthz"))
    except BaseException:
        stack.stop()
        raise
    return stack


# ================================================================ measuring


class Recorder:
    """Each timed step's latencies. The `ASIDE` steps, the bench finding what a customer
    signs (her link, which an e-mail brings her; the envelope, for `client`), are in the
    wall time but not in p50/p99, which are of requests that record a checkpoint."""

    LINK = "signing link (outbox)"
    ENVELOPE = "signature request (store)"
    ASIDE = frozenset({LINK, ENVELOPE})

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = defaultdict(list)

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(DEADLINE):
                yield
        except TimeoutError:
            raise BenchError(f"{name}: no answer within {DEADLINE:g} s") from None
        self.steps[name].append(time.perf_counter() - t0)

    def requests(self) -> list[float]:
        return [t for name, times in self.steps.items() if name not in self.ASIDE for t in times]


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: p99 of fewer than 100 values is their largest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-p * len(ordered) // 100)) - 1))]


@dataclasses.dataclass
class Result:
    scenario: str
    concurrency: int
    lifecycles: int
    seconds: float
    requests: list[float]
    steps: dict[str, list[float]]
    history: list[list[int]]  # per sampled lifecycle: events of each workflow it ran
    worker_rss: float | None
    api_rss: float | None
    cpu: dict[str, float | None]  # seconds, per process, over the run
    load: tuple[float, float]  # 1-minute load average before and after
    sql: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)  # statements, commits
    #: Events the e-mail sender's workflow (workflows/mail.py) gained over the run: woken
    #: by every commit that records mail, it runs a round each time.
    mail_events: int | None = None

    @property
    def rate(self) -> float:
        return self.lifecycles / self.seconds

    def merge(self, more: Result) -> None:
        """Add a later round of the same scenario and concurrency (--rounds)."""
        self.lifecycles += more.lifecycles
        self.seconds += more.seconds
        self.requests += more.requests
        for step, times in more.steps.items():
            self.steps.setdefault(step, []).extend(times)
        self.history = self.history or more.history
        self.worker_rss = max((v for v in (self.worker_rss, more.worker_rss) if v is not None), default=None)
        self.api_rss = max((v for v in (self.api_rss, more.api_rss) if v is not None), default=None)
        for k, v in more.cpu.items():
            mine = self.cpu.get(k)
            self.cpu[k] = None if v is None or mine is None else mine + v
        self.load = (self.load[0], more.load[1])
        if self.mail_events is not None and more.mail_events is not None:
            self.mail_events += more.mail_events
        else:
            self.mail_events = None
        for k, c in more.sql.items():
            self.sql[k] = self.sql.get(k, Counter()) + c

    def history_text(self) -> str:
        if not self.history:
            return "–"
        kinds = Counter(" + ".join(str(n) for n in h) for h in self.history)
        text = ", ".join(kinds)  # the same in every sample, as a rule
        if self.mail_events:
            text += f" (+ {self.mail_events / self.lifecycles:.1f} e-mail sender)"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "lifecycles": self.lifecycles,
            "seconds": round(self.seconds, 3),
            "lifecycles_per_s": round(self.rate, 3),
            "p50_ms": round(percentile(self.requests, 50) * 1000, 1),
            "p99_ms": round(percentile(self.requests, 99) * 1000, 1),
            "steps_p50_ms": {k: round(percentile(v, 50) * 1000, 1) for k, v in self.steps.items()},
            "history_events": self.history,
            "mail_sender_events_per_lifecycle": self.mail_events / self.lifecycles if self.mail_events else None,
            "worker_peak_rss_mb": self.worker_rss,
            "api_peak_rss_mb": self.api_rss,
            "cpu_ms_per_lifecycle": {
                k: (round(v / self.lifecycles * 1000, 1) if v is not None else None) for k, v in self.cpu.items()
            },
            "load": self.load,
            "sql_per_lifecycle": {k: {s: n / self.lifecycles for s, n in c.items()} for k, c in self.sql.items()},
        }


# ================================================================ the scenarios


class Scenarios:
    """The lifecycles, each returning the ids of the workflows it ran (to count their
    history events), and their untimed preparations."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.run_id = uuid.uuid4().hex[:6]
        self.serial = 0

    async def __aenter__(self) -> Scenarios:
        import httpx
        from temporalio.client import Client

        from config import Settings
        from domain.process import load_catalog
        from domain.types import Product
        from store.db import make_async_engine, make_session_factory
        from workflows.client import connect
        from workflows.starts import Starts

        s = self.stack
        self.http = httpx.AsyncClient(
            base_url=s.api_url,
            timeout=DEADLINE,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        self.floor_client = await Client.connect(s.address, namespace=s.namespace)
        self.settings = Settings(
            temporal_address=s.address,
            namespace=s.namespace,
            database_url=s.database_url,
            codec_keys=s.codec_keys,
            data_dir=s.tmp,
        )
        self.client = await connect(self.settings)  # needflow's: its data converter, encrypting
        self.engine = make_async_engine(s.database_url)
        self.sessions = make_session_factory(self.engine)
        self.starts = Starts(self.client, s.needflow_queue, self.settings.search_attributes)
        self.mortgage = load_catalog(self.settings.processes_dir).latest(Product.mortgage)
        # The mortgage owners, and the referral's bank: Kevin manages, Ryan refers, Bob
        # (in Ryan's city, of Kevin's team) is routed every referral. Made before any run:
        # a new employee makes the next routing read the team again.
        self.owners = [await self._employee(f"Owner {i}", "mortgage_broker", "mortgage") for i in range(OWNERS)]
        state = f"S-{self.run_id}"
        kevin = await self._employee("Kevin", "manager", "mortgage", products=[], states=[state])
        self.ryan = await self._employee(
            "Ryan", "advisor", "wealth", products=["wealth"], states=[state], cities=["San Francisco"]
        )
        self.bob = await self._employee(
            "Bob", "mortgage_broker", "mortgage", states=[state], cities=["San Francisco"], manager_id=kevin
        )
        self.state = state
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.engine.dispose()

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def owner(self, n: int) -> str:
        return self.owners[n % len(self.owners)]

    async def _employee(self, name: str, role: str, lob: str, **kw: Any) -> str:
        body = {
            "name": name,
            "email": f"{name.lower().replace(' ', '.')}.{self.run_id}@bank.example",
            "role": role,
            "line_of_business": lob,
            "products": kw.pop("products", ["mortgage"]),
            "cities": kw.pop("cities", []),
            "states": kw.pop("states", []),
            "capacity": 50,
            **kw,
        }
        return (await self.call(None, "employee", "POST", "/v1/employees", json=body, expect=201))["id"]

    async def call(
        self,
        rec: Recorder | None,
        step: str,
        method: str,
        path: str,
        *,
        expect: int,
        anonymous: bool = False,
        **kw: Any,
    ) -> dict[str, Any]:
        """One request with the bench's API key (none when `anonymous`), timed as `step`."""
        headers = {} if anonymous else {"Authorization": f"Bearer {self.stack.api_key}"}

        async def send() -> Any:
            return await self.http.request(method, path, headers=headers, **kw)

        if rec is None:
            async with asyncio.timeout(DEADLINE):
                r = await send()
        else:
            async with rec.step(step):
                r = await send()
        if r.status_code != expect:
            raise BenchError(f"{method} {path} ({step}): {r.status_code}, expected {expect}: {r.text[:500]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else {}

    # ------------------------------------------------------------ (a) the floor

    async def floor(self, rec: Recorder, _prepared: Any, *, local: bool = False) -> list[str]:
        from temporalio.client import WithStartWorkflowOperation
        from temporalio.common import WorkflowIDConflictPolicy

        from bench._floor import STAGES, FloorLifecycle

        wf_id = f"floor-{uuid.uuid4().hex}"
        start = WithStartWorkflowOperation(
            FloorLifecycle.run,
            local,
            id=wf_id,
            task_queue=self.stack.floor_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        async with rec.step("start (update-with-start)"):
            await self.floor_client.execute_update_with_start_workflow(
                FloorLifecycle.opened, start_workflow_operation=start
            )
        handle = self.floor_client.get_workflow_handle(wf_id)
        for stage in range(2, STAGES + 1):
            async with rec.step(f"update {stage}"):
                await handle.execute_update(FloorLifecycle.advance, stage)
        return [wf_id]

    # ------------------------------------------------------------ (b) through the Temporal client

    async def prepare_client(self) -> tuple[str, str, str]:
        """The customer and need an opening needs (made over HTTP, untimed)."""
        n = self.next_serial()
        customer = await self.call(None, "customer", "POST", "/v1/customers", json=self._customer(n), expect=201)
        need = await self.call(None, "need", "POST", f"/v1/customers/{customer['id']}/needs",
                               json=self._need(self.owner(n)), expect=201)  # fmt: skip
        return customer["id"], need["id"], self.owner(n)

    async def client_mortgage(self, rec: Recorder, prepared: tuple[str, str, str]) -> list[str]:
        """The update results are not read (but the last one's stage): each update's own
        result type, whatever it is, comes from the workflow's declaration."""
        from sqlalchemy import select

        from domain.ids import event_update_id, new_id, opportunity_workflow_id
        from domain.opportunity import (
            Actor,
            AdvanceCommand,
            EventCommand,
            OpportunityInput,
            SignatureOutcome,
            check_opening,
        )
        from domain.types import EventType, Product, Role
        from store.models import SignatureRequest
        from workflows.opportunity import OpportunityWorkflow

        customer_id, need_id, owner_id = prepared
        amount = Decimal("500000.00")
        opportunity_id = new_id("opp")
        wf_input = OpportunityInput(
            opportunity_id=opportunity_id,
            customer_id=customer_id,
            owner_id=owner_id,
            need_id=need_id,
            product=Product.mortgage,
            amount=amount,
            opened_by=owner_id,
            opened_via=KEY_NAME,
            process=check_opening(self.mortgage, Product.mortgage, amount),
        )
        async with rec.step("open (update-with-start)"):
            await self.starts.open_opportunity(wf_input)
        wf_id = opportunity_workflow_id(opportunity_id)
        handle = self.client.get_workflow_handle(wf_id)
        actor = Actor(id=owner_id, role=Role.mortgage_broker, via=KEY_NAME)
        async with rec.step("advance to searching"):
            cmd = AdvanceCommand(actor=actor, to_stage="searching", evidence={"realtor": "Jane Realty"})
            await handle.execute_update(OpportunityWorkflow.advance, cmd)
        for step, type_, data in (
            ("event: application submitted", EventType.mortgage_application_submitted, {"application_id": "APP-9"}),
            ("event: application approved", EventType.mortgage_application_approved, {"approval_id": "APR-9"}),
        ):
            event_id = f"evt-{uuid.uuid4().hex}"
            event = EventCommand(
                event_id=event_id, type=type_, occurred_at=datetime.now(UTC), data=data, source=KEY_NAME
            )
            async with rec.step(step):
                await handle.execute_update(OpportunityWorkflow.apply_event, event, id=event_update_id(event_id))
        # The envelope, from the store, as the signing page finds it (there by its token).
        async with rec.step(Recorder.ENVELOPE), self.sessions() as session:
            sig = await session.scalar(
                select(SignatureRequest)
                .where(SignatureRequest.opportunity_id == opportunity_id)
                .order_by(SignatureRequest.request_no.desc())
                .limit(1)
            )
        if sig is None or sig.status != "sent":
            raise BenchError(f"{opportunity_id}: no signature request out at Approved")
        outcome = SignatureOutcome(
            envelope_id=sig.envelope_id,
            status="completed",
            signer_name="Rachel Adams",
            document_sha256=sig.document_sha256,
            client_address="127.0.0.1",
            at=datetime.now(UTC),
        )
        async with rec.step("signed"):
            answer = await handle.execute_update(OpportunityWorkflow.signature_outcome, outcome)
        if getattr(answer, "stage", None) != "closed_won":
            raise BenchError(f"{opportunity_id} ended at {getattr(answer, 'stage', answer)!r}, not closed_won")
        return [wf_id]

    # ------------------------------------------------------------ (c) through the HTTP API

    def _customer(self, n: int) -> dict[str, Any]:
        return {
            "name": "Rachel Adams",
            "email": f"rachel.{self.run_id}.{n}@example.com",  # her own: the outbox is read by address
            "phone": "+12125550100",
            "city": "New York",
            "state": "NY",
        }

    @staticmethod
    def _need(recorded_by: str) -> dict[str, Any]:
        return {"kind": "buy_home", "description": "Buy a home in New York", "recorded_by": recorded_by}

    async def _event(self, rec: Recorder, step: str, type_: str, opportunity_id: str, data: dict) -> dict[str, Any]:
        body = {
            "id": f"evt-{uuid.uuid4().hex}",
            "type": type_,
            "occurred_at": datetime.now(UTC).isoformat(),
            "opportunity_id": opportunity_id,
            "data": data,
        }
        return await self.call(rec, step, "POST", "/v1/events", json=body, expect=202)

    async def http_mortgage(self, rec: Recorder, _prepared: Any) -> list[str]:
        from domain.ids import opportunity_workflow_id

        n = self.next_serial()
        owner = self.owner(n)
        customer_body = self._customer(n)
        customer = await self.call(rec, "POST customer", "POST", "/v1/customers", json=customer_body, expect=201)
        need = await self.call(rec, "POST need", "POST", f"/v1/customers/{customer['id']}/needs",
                               json=self._need(owner), expect=201)  # fmt: skip
        body = {
            "customer_id": customer["id"],
            "product": "mortgage",
            "owner_id": owner,
            "need_id": need["id"],
            "amount": "500000.00",
        }
        opp = await self.call(rec, "POST opportunity (open)", "POST", "/v1/opportunities", json=body, expect=201)
        path = f"/v1/opportunities/{opp['id']}"
        advance = {"actor_id": owner, "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
        await self.call(rec, "POST advance (searching)", "POST", f"{path}/advance", json=advance, expect=200)
        await self._event(rec, "POST event (submitted)", "mortgage.application_submitted", opp["id"],
                          {"application_id": "APP-9"})  # fmt: skip
        await self._event(rec, "POST event (approved)", "mortgage.application_approved", opp["id"],
                          {"approval_id": "APR-9"})  # fmt: skip
        mails = await self.call(rec, Recorder.LINK, "GET",
                                f"/v1/outbox?to={quote(customer_body['email'])}&limit=10", expect=200)  # fmt: skip
        tokens = [m.group(1) for mail in mails["items"] if (m := SIGNING_LINK.search(mail["body"]))]
        if not tokens:
            raise BenchError(f"no signing link for {opp['id']} in the outbox")
        # The signing page: a form post, no API key (the customer has none).
        await self.call(rec, "POST /sign (signed)", "POST", f"/sign/{tokens[0]}",
                        data={"full_name": "Rachel Adams", "agree": "yes"}, anonymous=True,
                        expect=200)  # fmt: skip
        return [opportunity_workflow_id(opp["id"])]

    # ------------------------------------------------------------ (d) a referral over HTTP

    async def http_referral(self, rec: Recorder, _prepared: Any) -> list[str]:
        from domain.ids import opportunity_workflow_id, referral_workflow_id

        n = self.next_serial()
        body = {
            "referrer": {"type": "employee", "id": self.ryan},
            "expressed_interest": "mortgage",
            "notes": "Wants to buy her first home",
            "value": "500000.00",
            "prospect": {
                "name": "Kiara Jones",
                "phone": "+14155550123",
                "email": f"kiara.{self.run_id}.{n}@example.com",
                "employer": "Acme",
                "city": "San Francisco",
                "state": self.state,
            },
        }
        ref = await self.call(rec, "POST referral (routed)", "POST", "/v1/referrals", json=body, expect=201)
        if ref["assignee_id"] != self.bob:
            raise BenchError(f"referral {ref['id']} went to {ref['assignee_id'] or ref['queue']}, not to Bob")
        path = f"/v1/referrals/{ref['id']}"
        await self.call(rec, "POST accept", "POST", f"{path}/accept", json={"actor_id": self.bob}, expect=200)
        convert = {"actor_id": self.bob, "need": {"kind": "buy_home", "description": "A home"}}
        ref = await self.call(rec, "POST convert", "POST", f"{path}/convert", json=convert, expect=200)
        return [referral_workflow_id(ref["id"]), opportunity_workflow_id(ref["opportunity_id"])]

    # ------------------------------------------------------------ plumbing

    def lifecycle(self, scenario: str) -> Callable[[Recorder, Any], Awaitable[list[str]]]:
        return {
            "floor": self.floor,
            "floor-local": functools.partial(self.floor, local=True),
            "client": self.client_mortgage,
            "http": self.http_mortgage,
            "referral": self.http_referral,
        }[scenario]

    async def prepare(self, scenario: str, count: int) -> list[Any]:
        if scenario != "client":
            return [None] * count
        sem = asyncio.Semaphore(10)

        async def one() -> Any:
            async with sem:
                return await self.prepare_client()

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def mail_sender_events(self) -> tuple[str, int] | None:
        """The e-mail sender's current run and how many events its history holds."""
        from temporalio.service import RPCError

        from workflows.mail import sender_workflow_id

        handle = self.client.get_workflow_handle(sender_workflow_id(self.stack.needflow_queue))
        try:
            async with asyncio.timeout(DEADLINE):
                run_id = (await handle.describe()).run_id
                events = len(
                    [e async for e in self.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history_events()]
                )
        except RPCError:
            return None
        return run_id, events

    async def history_events(self, scenario: str, workflow_id: str) -> int:
        client = self.floor_client if scenario.startswith("floor") else self.client
        async with asyncio.timeout(DEADLINE):
            return len([e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def run_one(
    sc: Scenarios, stack: Stack, scenario: str, count: int, concurrency: int, profiler: Profiler | None, label: str
) -> Result:
    prepared = await sc.prepare(scenario, count)
    lifecycle = sc.lifecycle(scenario)
    rec = Recorder()
    finished: list[list[str]] = []
    worker = stack.procs["floor-worker" if scenario.startswith("floor") else "worker"]
    watched = {"server": stack.procs.get("temporal"), "worker": worker, "API": stack.procs["api"]}
    for proc in (worker, stack.procs["api"]):
        proc.reset_peak_rss()
    sql_procs = {} if scenario.startswith("floor") else {"worker": worker, "API": stack.procs["api"]}
    sql0 = {k: p.sql_counts(stack.sql_counts_file(p)) for k, p in sql_procs.items()}
    mail0 = None if scenario.startswith("floor") else await sc.mail_sender_events()
    cpu0 = {k: (p.cpu() if p else None) for k, p in watched.items()}
    own0 = own_cpu_seconds()
    load0 = os.getloadavg()[0]
    next_index = iter(range(count))
    if profiler is not None:
        profiler.start(label)

    async def lane() -> None:
        for i in next_index:
            finished.append(await lifecycle(rec, prepared[i]))

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        seconds = time.perf_counter() - t0
        if profiler is not None:
            profiler.stop()
    cpu = {
        k: (after - cpu0[k] if (after := (p.cpu() if p else None)) is not None and cpu0[k] is not None else None)
        for k, p in watched.items()
    }
    cpu["bench"] = own_cpu_seconds() - own0
    sql = {}
    for k, p in sql_procs.items():
        after = p.sql_counts(stack.sql_counts_file(p))
        if after is not None and sql0[k] is not None:
            sql[k] = after - sql0[k]
            del sql[k]["#"]
    result = Result(
        scenario=scenario,
        concurrency=concurrency,
        lifecycles=count,
        seconds=seconds,
        requests=rec.requests(),
        steps=dict(rec.steps),
        history=[],
        worker_rss=worker.peak_rss_mb(),
        api_rss=stack.procs["api"].peak_rss_mb() if scenario in ("http", "referral") else None,
        cpu=cpu,
        load=(load0, os.getloadavg()[0]),
        sql=sql,
    )
    if mail0 is not None and (mail1 := await sc.mail_sender_events()) is not None and mail1[0] == mail0[0]:
        result.mail_events = mail1[1] - mail0[1]  # the same run (no continue-as-new meanwhile)
    for ids in finished[:HISTORY_SAMPLE]:
        result.history.append([await sc.history_events(scenario, wf_id) for wf_id in ids])
    return result


# ================================================================ profiling (py-spy)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread's name (its `comm`) and user + system CPU seconds, from /proc."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        threads[int(task.name)] = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        )
    return threads


def thread_kind(pid: int, tid: int, name: str) -> str:
    """Python threads carry the process's name (3.11 names no OS thread): the main one
    runs the event loop (activities, SQLAlchemy, the SDK's Python side); the others are the
    SDK's thread pool that runs workflow activations and aiosqlite's connection threads
    (SQLite's C code, without the GIL). Other names are the Temporal SDK's Rust core."""
    if tid == pid:
        return "main thread (the event loop: activities, SQLAlchemy, the SDK's Python side)"
    if name.startswith("python"):
        return "other Python threads (workflow activations; aiosqlite: SQLite's C code)"
    return f"native threads ({name.rstrip('0123456789-')}…: the Temporal SDK's Rust core)"


class Profiler:
    """While a run goes (`--profile DIR`): py-spy sampling the worker and the API where
    they hold the GIL (Python's own work; a thread waiting, or in SQLite's C code, holds
    none), and each of their threads' CPU from /proc (all the work, Python or not)."""

    def __init__(self, stack: Stack, out: Path) -> None:
        self.py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if self.py_spy is None:
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.stack, self.out = stack, out
        out.mkdir(parents=True, exist_ok=True)
        self.running: list[subprocess.Popen] = []
        self.files: list[tuple[str, Path]] = []
        self.threads: list[tuple[str, str, dict[int, tuple[str, float]], dict[int, tuple[str, float]]]] = []
        self._before: dict[str, dict[int, tuple[str, float]]] = {}
        self._label = ""

    def start(self, label: str) -> None:
        self._label = label
        for who in ("worker", "api"):
            pid = self.stack.procs[who].pid
            path = self.out / f"{who}-{label}.txt"
            argv = [self.py_spy, "record", "--pid", str(pid), "--gil", "--format", "raw",
                    "--full-filenames", "--nolineno", "--rate", "100", "--output", str(path)]  # fmt: skip
            self.running.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"{path}.log", "w"))  # noqa: SIM115
            )
            self.files.append((who, path))
        time.sleep(0.5)  # attached before the first request
        self._before = {who: thread_cpu(self.stack.procs[who].pid) for who in ("worker", "api")}

    def stop(self) -> None:
        for who in ("worker", "api"):
            self.threads.append((who, self._label, self._before[who], thread_cpu(self.stack.procs[who].pid)))
        for p in self.running:
            p.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        for p in self.running:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.running.clear()

    def thread_table(self) -> list[str]:
        lines = [
            "## CPU by thread (from /proc, over each run)",
            "",
            "| process | run | threads | CPU s | share of the process |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for who, label, before, after in self.threads:
            pid = self.stack.procs[who].pid
            kinds: Counter[str] = Counter()
            for tid, (name, cpu) in after.items():
                kinds[thread_kind(pid, tid, name)] += cpu - before.get(tid, (name, 0.0))[1]
            total = sum(kinds.values()) or 1.0
            for kind, cpu in kinds.most_common():
                lines.append(f"| {who} | {label} | {kind} | {cpu:.1f} | {100 * cpu / total:.0f} % |")
        return [*lines, ""]

    def summary(self, top: int = 15) -> str:
        lines = ["# Where the time goes", "", *self.thread_table(),
                 "Then py-spy's samples of a thread holding the GIL (Python's own work).", ""]  # fmt: skip
        for who, path in self.files:
            lines += summarize_stacks(who, path, top)
        text = "\n".join(lines)
        (self.out / "summary.md").write_text(text + "\n")
        return text


def _frame(frame: str) -> tuple[str, str]:
    """`function (file)` of py-spy's raw format: (function, file)."""
    name, _, rest = frame.partition(" (")
    return name, rest.rstrip(")")


AREAS = (  # the first match of a leaf frame's file names its area
    ("temporalio/worker/workflow_sandbox", "Temporal workflow sandbox"),
    ("temporalio/worker/_workflow_instance", "Temporal workflow instance"),
    ("temporalio/converter", "Temporal data converter"),
    ("temporalio/", "Temporal SDK (other)"),
    ("google/protobuf", "protobuf"),
    ("/pydantic", "pydantic"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite", "aiosqlite / sqlite3"),
    ("sqlite3", "aiosqlite / sqlite3"),
    ("cryptography", "cryptography"),
    ("/fastapi/", "FastAPI"),
    ("/starlette/", "Starlette"),
    ("/uvicorn/", "uvicorn"),
    ("/httptools", "uvicorn"),
    ("/jinja2/", "Jinja2"),
    ("/limits/", "limits (rate limit)"),
    ("/opentelemetry", "OpenTelemetry"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("uvloop", "asyncio"),
    ("/json/", "json"),
    ("/yaml/", "yaml"),
    ("/typing.py", "typing"),
    ("/inspect.py", "inspect"),
    ("/copy.py", "copy"),
    ("/dataclasses.py", "dataclasses"),
    ("/importlib/", "importlib"),
)


def _area(file: str) -> str:
    for needle, area in AREAS:
        if needle in file:
            return area
    project = str(ROOT) + "/"
    if file.startswith(project) and "/.venv/" not in file:
        return "needflow: " + file[len(project) :].split("/")[0]
    return "other: " + Path(file).name


#: Frames on (nearly) every stack, which say nothing about where the time goes.
PLUMBING = (
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "/threading.py",
    "concurrent/futures/thread.py",
    "bench/lifecycle.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
)


def summarize_stacks(who: str, path: Path, top: int) -> list[str]:
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    try:
        text = path.read_text()
    except OSError:
        return [f"## {who}: no samples ({path} missing; see {path}.log)", ""]
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append(([_frame(f) for f in stack.split(";") if f], int(n)))
    total = sum(n for _, n in stacks)
    if not total:
        return [f"## {who}: no samples", ""]
    project = str(ROOT) + "/"
    by_area: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        leaf_name, leaf_file = frames[-1]
        by_area[_area(leaf_file)] += n
        self_time[f"{leaf_name} ({_short(leaf_file)})"] += n
        for name, file in set(frames):
            if any(p in file for p in PLUMBING):
                continue
            inclusive[f"{name} ({_short(file)})"] += n
            if file.startswith(project) and "/.venv/" not in file:
                own[f"{name} ({_short(file)})"] += n

    def table(title: str, counter: Counter[str], what: str = "function") -> list[str]:
        rows = [f"| {100 * n / total:5.1f} % | `{k}` |" for k, n in counter.most_common(top)]
        return [title, "", f"| share | {what} |", "| ---: | --- |", *rows, ""]

    return [
        f"## {who} ({path.name}: {total} samples holding the GIL, at 100 Hz)",
        "",
        *table("Self time by area (the leaf frame's package):", by_area, "area"),
        *table(f"Top {top} functions, inclusive (on the stack; event loop and thread plumbing left out):", inclusive),
        *table(f"Top {top} of needflow's own functions, inclusive:", own),
        *table(f"Top {top} functions, self (the leaf):", self_time),
    ]


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", str(ROOT) + "/"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return file


# ================================================================ output


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import temporalio

    try:
        from devstack.temporal import temporal_cli

        cli = subprocess.run(
            [temporal_cli(), "--version"], check=False, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - only for the header
        cli = "temporal CLI: unknown"
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, temporalio {temporalio.__version__}, "
        f"{cli}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def tables(results: list[Result]) -> str:
    floor = {r.concurrency: r.rate for r in results if r.scenario == "floor"}
    out = [
        "| scenario | concurrency | lifecycles | lifecycles/s | × floor | p50 ms | p99 ms | history events "
        "/ lifecycle | worker peak RSS MB | API peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        base = floor.get(r.concurrency)
        ratio = "–" if base is None else f"{r.rate / base:.2f}"
        out.append(
            f"| {r.scenario} | {r.concurrency} | {r.lifecycles} | {r.rate:.2f} | {ratio} | "
            f"{_ms(percentile(r.requests, 50))} | {_ms(percentile(r.requests, 99))} | {r.history_text()} | "
            f"{_mb(r.worker_rss)} | {_mb(r.api_rss)} |"
        )
    out += [
        "",
        "Each step (p50 / p99 ms):",
        "",
        "| scenario | concurrency | step | n | p50 ms | p99 ms |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        for step, times in r.steps.items():
            out.append(
                f"| {r.scenario} | {r.concurrency} | {step} | {len(times)} | {_ms(percentile(times, 50))} | "
                f"{_ms(percentile(times, 99))} |"
            )
    cores = os.cpu_count() or 1
    out += [
        "",
        f"CPU per lifecycle (ms; `busy` is all of it over the run's wall time × {cores} CPUs):",
        "",
        "| scenario | concurrency | Temporal server | worker | API | bench driver | sum | busy | load before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        per = {k: (v / r.lifecycles * 1000 if v is not None else None) for k, v in r.cpu.items()}
        api = per["API"] if r.scenario in ("http", "referral") else None
        parts = [per["server"], per["worker"], api, per["bench"]]
        total = sum(p for p in parts if p is not None)
        busy = total * r.lifecycles / 1000 / (r.seconds * cores)
        cells = " | ".join("–" if p is None else f"{p:.0f}" for p in parts)
        out.append(
            f"| {r.scenario} | {r.concurrency} | {cells} | {total:.0f} | {100 * busy:.0f} % | "
            f"{r.load[0]:.2f} → {r.load[1]:.2f} |"
        )
    sql_runs = [r for r in results if r.sql]
    if sql_runs:
        out += [
            "",
            "SQL per lifecycle (statements by kind, and transactions committed):",
            "",
            "| scenario | concurrency | process | statements | SELECT | INSERT | UPDATE | DELETE | other | commits |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sql_runs:
            for who, c in r.sql.items():
                if who == "API" and r.scenario not in ("http", "referral") and not sum(c.values()):
                    continue
                main = ("SELECT", "INSERT", "UPDATE", "DELETE")
                other = sum(n for k, n in c.items() if k not in (*main, "COMMIT") and not k.startswith("@"))
                n = r.lifecycles
                cells = " | ".join(f"{c[k] / n:.1f}" for k in main)
                statements = sum(n_ for k, n_ in c.items() if k != "COMMIT" and not k.startswith("@"))
                out.append(
                    f"| {r.scenario} | {r.concurrency} | {who} | {statements / n:.1f} | {cells} | {other / n:.1f} | "
                    f"{c['COMMIT'] / n:.1f} |"
                )
        out += ["", "The worker's statements per lifecycle, by activity:", ""]
        for r in sql_runs:
            if c := r.sql.get("worker"):
                by = sorted(((k[1:], n) for k, n in c.items() if k.startswith("@")), key=lambda kv: -kv[1])
                out.append(
                    f"- {r.scenario}, c={r.concurrency}: " + ", ".join(f"{k} {n / r.lifecycles:.1f}" for k, n in by)
                )
    return "\n".join(out)


# ================================================================ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"lifecycles per run (default {DEFAULT_COUNT})")
    p.add_argument("--concurrency", default=DEFAULT_CONCURRENCY,
                   help=f"lifecycles at a time, comma-separated: one run each (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each run into this many rounds, the scenarios taking turns (default 1)",
    )
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"untimed lifecycles of each scenario before its first run (default {DEFAULT_WARMUP})")  # fmt: skip
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"some of {','.join(SCENARIOS + EXTRA_SCENARIOS)} (default: all but {','.join(EXTRA_SCENARIOS)})")  # fmt: skip
    p.add_argument("--temporal", metavar="ADDRESS", help="an existing Temporal server (host:port); default: start one")
    p.add_argument("--namespace", default="default")
    p.add_argument("--database-url", metavar="URL",
                   help="a PostgreSQL server (default DATABASE_URL) to make a fresh database on (dropped afterwards);\n"
                        "unset: a fresh SQLite file")  # fmt: skip
    p.add_argument(
        "--server-pragma",
        action="append",
        default=[],
        metavar="PRAGMA=VALUE",
        help="experiment: a --sqlite-pragma for the dev server started here (e.g. synchronous=OFF)",
    )
    add_setting_argument(p)
    p.add_argument("--profile", metavar="DIR", type=Path, help="py-spy the worker and the API during `http`")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (database, logs) and print where")
    # The child processes this script starts (not for people).
    p.add_argument("--role", choices=["floor-worker", "needflow-worker", "api"], help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--task-queue", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role is None:
        args.levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
        args.chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        if unknown := set(args.chosen) - set(SCENARIOS + EXTRA_SCENARIOS):
            known = ", ".join(SCENARIOS + EXTRA_SCENARIOS)
            p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {known}")
        if args.count < 1 or not args.levels or min(args.levels) < 1:
            p.error("--count and every --concurrency must be at least 1")
        if not 1 <= args.rounds <= args.count:
            p.error("--rounds must be between 1 and --count")
    return args


async def bench(args: argparse.Namespace, stack: Stack) -> list[Result]:
    results: list[Result] = []
    profiler = Profiler(stack, args.profile) if args.profile else None
    async with Scenarios(stack) as sc:
        for scenario in args.chosen:  # warm-up: imports, caches, the sandbox's first run
            if args.warmup:
                rec = Recorder()
                for item in await sc.prepare(scenario, args.warmup):
                    await sc.lifecycle(scenario)(rec, item)
        for concurrency in args.levels:
            # --rounds: the scenarios take turns, a share of --count each, so that what
            # else the machine does falls on all of them alike.
            shares = [args.count // args.rounds + (r < args.count % args.rounds) for r in range(args.rounds)]
            merged: dict[str, Result] = {}
            for r, share in enumerate(shares):
                for scenario in args.chosen:
                    profiling = profiler if scenario == "http" else None
                    label = f"{scenario}-c{concurrency}" + (f"-r{r + 1}" if args.rounds > 1 else "")
                    result = await run_one(sc, stack, scenario, share, concurrency, profiling, label)
                    print(
                        f"  {scenario:<11} c={concurrency:<3} {result.lifecycles} lifecycles in "
                        f"{result.seconds:.1f} s: {result.rate:.2f}/s"
                        + (f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""),
                        flush=True,
                    )
                    if scenario in merged:
                        merged[scenario].merge(result)
                    else:
                        merged[scenario] = result
            results += [merged[scenario] for scenario in args.chosen]
    if profiler is not None:
        print()
        print(profiler.summary())
    return results


def main(argv: list[str] | None = None) -> int:
    from devstack.stack import shown_url

    args = parse_args(argv)
    if args.role is not None:
        child_main(args)
        return 0
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="needflow-bench-"))
    print(f"Machine: {machine()}", flush=True)
    stack = None
    try:
        stack = start_stack(args, tmp)
        print(
            f"Stack up in {time.monotonic() - started:.1f} s: Temporal {stack.address}"
            f"{' (given)' if args.temporal else ' (dev server, SQLite file)'}, API {stack.api_url}, "
            f"database {shown_url(stack.database_url)}",
            flush=True,
        )
        if args.server_pragma:
            print(f"Experiment, not make run's setup: dev server pragmas {args.server_pragma}", flush=True)
        results = asyncio.run(bench(args, stack))
    except BenchError as err:
        print(f"lifecycle bench failed: {err}", file=sys.stderr)
        if stack is not None:
            for proc in stack.procs.values():
                print(f"---- {proc.log_path} ----\n{proc.tail(15)}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
        if args.keep:
            print(f"kept {tmp} (database, logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(tables(results))
    print()
    print(f"Machine: {machine()}")
    print(f"Whole run: {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
