"""Many open opportunities held, then each advanced once (issue 10: "10,000 open
opportunities held, then each advanced once, with the worker under 1 GiB RSS and
throughput no lower than with 100 open").

For each N of --open, on a stack of its own (bench/lifecycle.py's `start_stack`: a Temporal
dev server on a SQLite file, a fresh SQLite store or a fresh PostgreSQL database, then
needflow's worker and API, each in its own process, as `make run` runs them):

1. untimed: N customers, each with a need (buy a home), made in bulk by `POST /v1/imports`
   (chunks of IMPORT_CHUNK; a book without opportunities starts no workflow), and the
   mortgage owners (`lifecycle.Scenarios`);
2. timed, the opening: N mortgage opportunities opened and left open, their workflows
   waiting at the first stage (Interested). By default (`--open-via import`) through
   `POST /v1/imports`, as open opportunities of a book at their first stage, IMPORT_CHUNK
   a request, --open-concurrency // 32 requests at a time (at least one): the store
   writes their rows in bulk, then the API starts each one's workflow with
   `Starts.open_opportunity`, the update-with-start every opening makes, 32 at a time per
   request; each workflow records its opening (the `opportunity.open` activity) and waits,
   as any open opportunity's does (it carries its imported checkpoint in its input). With
   `--open-via client`, each is opened as `POST /v1/opportunities` opens it, without
   HTTP: `Starts.open_opportunity` as the `client` scenario calls it, --open-concurrency
   at a time. The import is the default because it opened 1.5 times as fast here (15.2
   against 10.1 a second at N = 1,500; the store's rows in bulk, and less of the worker's
   CPU per open, 39 against 46 ms) and its workflows are the same for what follows: 26
   history events after the advance either way, the same worker CPU per advance;
3. held --hold seconds (10), the worker's RSS read;
4. timed, the advances: each of the N advanced once, to Searching with a realtor, the
   Update `advance` through the Temporal client as the `client` scenario's step does,
   --concurrency (10) at a time, in the order they were opened. --warmup (5) more are
   opened with them and advanced first, untimed (the fresh worker's first updates).

Printed, one row per N: the opening's time and rate, the worker's RSS held and its peak
(VmHWM, reset through /proc/PID/clear_refs before each phase) while opening, while holding
and while advancing; advances/s and its ratio to the smallest N's, p50/p99 of an advance,
the worker's and the Temporal server's CPU per advance, SQL statements per advance in the
worker, and the worker's workflow cache: its size and the advances' sticky cache hits and
misses (the SDK's own counters, read from the worker's Prometheus port, which this bench
turns on for it).

Each N runs on a fresh stack, worker and Temporal server included: every RSS figure is
then that N's alone, and no N's advances find the workflows of another in the server or
the worker's cache. The worker keeps NEEDFLOW_WORKFLOW_CACHE workflows in its cache
(temporalio's `max_cached_workflows`; --setting NEEDFLOW_WORKFLOW_CACHE=N to try another):
with more open workflows than that, an advance whose workflow was evicted is a cache miss,
and the worker fetches the workflow's whole history and replays it before it can run the
update; that is what this measures. Advanced in the order opened, nearly every advance
misses once N is well over the cache (the least recently used are evicted first, and those
are the ones next in turn).
The floor's idle worker, which `start_stack` also starts, takes no part.

It never asserts a timing. bench/README.md holds the figures measured.

    .venv/bin/python bench/open_many.py                          # make bench's size: 100 and 2,000
    .venv/bin/python bench/open_many.py --open 100,10000         # the issue's goal: ~22 minutes here
    .venv/bin/python bench/open_many.py --open 100,10000 --json var/open-many.json
    .venv/bin/python bench/open_many.py --open 1000 --open-via client
    .venv/bin/python bench/open_many.py --database-url postgresql://root@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lifecycle import (  # noqa: E402
    DEADLINE,
    KEY_NAME,
    BenchError,
    Proc,
    Recorder,
    Scenarios,
    Stack,
    add_setting_argument,
    free_port,
    machine,
    own_cpu_seconds,
    percentile,
    settings_given,
    start_stack,
    status_mb,
)
from config import Settings  # noqa: E402

#: What `make bench` runs: 100 and 2,000 open (~6 minutes here); the issue's 10,000 is asked for.
DEFAULT_OPEN = "100,2000"
DEFAULT_CONCURRENCY = 10
DEFAULT_OPEN_CONCURRENCY = 50
DEFAULT_HOLD = 10.0
DEFAULT_WARMUP = 5
#: Customers (each with a need) per `POST /v1/imports` of the untimed preparation, and
#: open opportunities per import with --open-via import: each request well within DEADLINE.
IMPORT_CHUNK = 1000
#: Workflows the API starts at once per import request (api/routers/imports.py).
API_STARTS_AT_ONCE = 32
#: How often an import answered 503 `timeout` is repeated before the bench gives up.
IMPORT_REPEATS = 5
#: The realtor of every advance, as the `client` scenario's.
REALTOR = "Jane Realty"
AMOUNT = Decimal("500000.00")


# ================================================================ the worker, from outside


def rss_mb(pid: int) -> float | None:
    """The process's resident set now (VmRSS), MB."""
    return status_mb(pid, "VmRSS")


def sdk_metrics(port: int) -> dict[str, float]:
    """The worker's sticky cache counters and gauge (temporalio's core: `sticky_cache_hit`,
    `sticky_cache_miss`, `sticky_cache_size`, `sticky_cache_total_forced_eviction`), summed
    over their label sets, from its Prometheus port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("temporal_sticky_cache"):
            continue
        name, _, value = line.rpartition(" ")
        key = name.split("{", 1)[0].removeprefix("temporal_").removesuffix("_total")
        out[key] = out.get(key, 0.0) + float(value)
    return out


# ================================================================ the figures


@dataclass
class Figures:
    """One N's figures (MB, seconds, per-advance means)."""

    open: int
    open_via: str
    warmup: int
    concurrency: int
    open_seconds: float = 0.0
    open_p50_ms: float | None = None
    open_p99_ms: float | None = None
    rss_held_mb: float | None = None
    peak_opening_mb: float | None = None
    peak_holding_mb: float | None = None
    peak_advancing_mb: float | None = None
    api_peak_mb: float | None = None
    advances: int = 0
    advance_seconds: float = 0.0
    advance_p50_ms: float = 0.0
    advance_p99_ms: float = 0.0
    cpu_ms_per_advance: dict[str, float | None] = field(default_factory=dict)
    cpu_ms_per_open: dict[str, float | None] = field(default_factory=dict)
    worker_sql_per_advance: float | None = None
    cache_size_held: float | None = None
    cache_hits: float | None = None
    cache_misses: float | None = None
    forced_evictions: float | None = None
    history_events: int | None = None
    #: Imports repeated after a 503 `timeout` while opening (--open-via import).
    import_repeats: int = 0
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def opens_per_s(self) -> float:
        return (self.open + self.warmup) / self.open_seconds

    @property
    def rate(self) -> float:
        return self.advances / self.advance_seconds

    def as_json(self, base: float) -> dict[str, Any]:
        return {
            **asdict(self),
            "opens_per_s": round(self.opens_per_s, 3),
            "advances_per_s": round(self.rate, 3),
            "ratio_to_smallest": round(self.rate / base, 3),
        }


class Phase:
    """CPU of the watched processes (and this one) and the worker's peak RSS over a phase."""

    def __init__(self, procs: dict[str, Proc | None], worker: Proc) -> None:
        self.procs, self.worker = procs, worker

    def __enter__(self) -> Phase:
        self.worker.reset_peak_rss()
        self.cpu0 = {k: p.cpu() if p else None for k, p in self.procs.items()}
        self.own0 = own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = self.worker.peak_rss_mb()
        self.cpu: dict[str, float | None] = {}
        for k, p in self.procs.items():
            after = p.cpu() if p else None
            self.cpu[k] = after - self.cpu0[k] if after is not None and self.cpu0[k] is not None else None
        self.cpu["bench"] = own_cpu_seconds() - self.own0

    def ms_per(self, n: int) -> dict[str, float | None]:
        return {k: None if v is None else round(v / n * 1000, 1) for k, v in self.cpu.items()}


# ================================================================ the book's records


def customer_record(i: int) -> dict[str, Any]:
    return {"external_id": f"C{i}", "name": f"Customer {i}", "city": "New York", "state": "NY"}


def need_record(i: int, owner_id: str, at: str) -> dict[str, Any]:
    return {
        "external_id": f"N{i}",
        "customer": f"C{i}",
        "kind": "buy_home",
        "description": "Buy a home in New York",
        "recorded_by": owner_id,
        "recorded_at": at,
    }


def open_opportunity_record(i: int, customer_id: str, need_id: str, owner_id: str, at: str) -> dict[str, Any]:
    """An open mortgage at its first stage, as an old CRM would have it (--open-via import)."""
    first = {"stage": "interested", "entered_at": at, "trigger": "manual", "actor": owner_id,
             "evidence": {"need_id": need_id}}  # fmt: skip
    return {
        "external_id": f"O{i}",
        "customer": customer_id,
        "product": "mortgage",
        "owner": owner_id,
        "need": need_id,
        "amount": str(AMOUNT),
        "opened_at": at,
        "status": "open",
        "checkpoints": [first],
    }


# ================================================================ the bench


async def in_lanes(items: Iterable[Any], lanes: int, work: Callable[[Any], Awaitable[None]]) -> None:
    """`work` on every item, `lanes` at a time."""
    it = iter(items)

    async def lane() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(lane() for _ in range(lanes)))


class OpenMany:
    """One N on one stack: the customers and needs, the opening, the hold, the advances."""

    def __init__(self, sc: Scenarios, stack: Stack, args: argparse.Namespace, metrics_port: int) -> None:
        self.sc, self.stack, self.args, self.metrics_port = sc, stack, args, metrics_port
        self.source = f"open-many-{sc.run_id}"
        self.worker = stack.procs["worker"]
        #: Imports repeated after a 503 (`_import`).
        self.repeats = 0

    async def _import(self, book: dict[str, Any], seconds: float = DEADLINE) -> dict[str, Any]:
        """`POST /v1/imports`, given `seconds` to answer. A 503 `timeout` (a workflow that did
        not answer within NEEDFLOW_UPDATE_DEADLINE: a loaded machine) is answered as the API
        says: the same import again after Retry-After, which resumes what the first did not
        get to (counted in `self.repeats`)."""
        for _ in range(IMPORT_REPEATS + 1):
            r = await self.sc.http.post(
                "/v1/imports", json=book, headers={"Authorization": f"Bearer {self.stack.api_key}"}, timeout=seconds
            )
            if r.status_code != 503:
                break
            self.repeats += 1
            await asyncio.sleep(float(r.headers.get("retry-after", 5)))
        if r.status_code != 200:
            raise BenchError(f"POST /v1/imports: {r.status_code}: {r.text[:500]}")
        return r.json()

    async def customers(self, count: int) -> list[tuple[str, str, str]]:
        """(customer, need, owner) for `count` opportunities, imported in chunks (untimed)."""
        now = datetime.now(UTC).isoformat()
        made: list[tuple[str, str, str]] = []
        for start in range(0, count, IMPORT_CHUNK):
            serials = range(start, min(count, start + IMPORT_CHUNK))
            book = {
                "source": self.source,
                "customers": [customer_record(i) for i in serials],
                "needs": [need_record(i, self.sc.owner(i), now) for i in serials],
            }
            ids = (await self._import(book))["ids"]
            made += [(ids["customers"][f"C{i}"], ids["needs"][f"N{i}"], self.sc.owner(i)) for i in serials]
        return made

    async def open_client(self, prepared: list[tuple[str, str, str]], rec: Recorder) -> list[str]:
        """Each through `Starts.open_opportunity`, as POST /v1/opportunities opens it."""
        from domain.ids import new_id
        from domain.opportunity import OpportunityInput, check_opening
        from domain.types import Product

        process = check_opening(self.sc.mortgage, Product.mortgage, AMOUNT)
        ids = [new_id("opp") for _ in prepared]

        async def one(i: int) -> None:
            customer_id, need_id, owner_id = prepared[i]
            wf_input = OpportunityInput(
                opportunity_id=ids[i],
                customer_id=customer_id,
                owner_id=owner_id,
                need_id=need_id,
                product=Product.mortgage,
                amount=AMOUNT,
                opened_by=owner_id,
                opened_via=KEY_NAME,
                process=process,
            )
            async with rec.step("open (update-with-start)"):
                await self.sc.starts.open_opportunity(wf_input)

        await in_lanes(range(len(prepared)), self.args.open_concurrency, one)
        return ids

    async def open_import(self, prepared: list[tuple[str, str, str]], rec: Recorder) -> list[str]:
        """As open opportunities of a book (`POST /v1/imports`), at its first stage; the API
        starts each one's workflow. --open-concurrency // 32 requests at a time."""
        now = datetime.now(UTC).isoformat()
        books = []
        for start in range(0, len(prepared), IMPORT_CHUNK):
            books.append(
                {
                    "source": self.source,
                    "opportunities": [
                        open_opportunity_record(i, c, n, o, now)
                        for i, (c, n, o) in enumerate(prepared[start : start + IMPORT_CHUNK], start)
                    ],
                }
            )
        ids: dict[int, str] = {}

        async def one(b: int) -> None:  # a request per IMPORT_CHUNK: minutes, not a request's latency
            answer = await self._import(books[b], seconds=20 * DEADLINE)
            for ext, opp in answer["ids"]["opportunities"].items():
                ids[int(ext[1:])] = opp

        lanes = max(1, self.args.open_concurrency // API_STARTS_AT_ONCE)
        await in_lanes(range(len(books)), lanes, one)
        return [ids[i] for i in range(len(prepared))]

    async def advance(self, opportunity_id: str, owner_id: str, rec: Recorder | None) -> None:
        from domain.ids import opportunity_workflow_id
        from domain.opportunity import Actor, AdvanceCommand
        from domain.types import Role
        from workflows.opportunity import OpportunityWorkflow

        handle = self.sc.client.get_workflow_handle(opportunity_workflow_id(opportunity_id))
        cmd = AdvanceCommand(
            actor=Actor(id=owner_id, role=Role.mortgage_broker, via=KEY_NAME),
            to_stage="searching",
            evidence={"realtor": REALTOR},
        )
        if rec is None:
            async with asyncio.timeout(DEADLINE):
                answer = await handle.execute_update(OpportunityWorkflow.advance, cmd)
        else:
            async with rec.step("advance to searching"):
                answer = await handle.execute_update(OpportunityWorkflow.advance, cmd)
        if getattr(answer, "stage", None) != "searching":
            raise BenchError(f"{opportunity_id}: advanced to {getattr(answer, 'stage', answer)!r}, not searching")

    def metrics(self) -> dict[str, float]:
        try:
            return sdk_metrics(self.metrics_port)
        except OSError as err:
            print(f"  (the worker's metrics at port {self.metrics_port}: {err})", flush=True)
            return {}

    async def run(self, n: int) -> Figures:
        args, worker = self.args, self.worker
        fig = Figures(open=n, open_via=args.open_via, warmup=args.warmup, concurrency=args.concurrency)
        watched = {"worker": worker, "server": self.stack.procs.get("temporal"), "API": self.stack.procs["api"]}
        t0 = time.perf_counter()
        prepared = await self.customers(n + args.warmup)
        print(f"  {n + args.warmup:,} customers and needs imported in {time.perf_counter() - t0:.1f} s", flush=True)

        rec = Recorder()
        opener = self.open_client if args.open_via == "client" else self.open_import
        with Phase(watched, worker) as opening:
            ids = await opener(prepared, rec)
        fig.open_seconds, fig.peak_opening_mb = opening.seconds, opening.peak_mb
        fig.import_repeats = self.repeats
        fig.cpu_ms_per_open = opening.ms_per(n + args.warmup)
        if args.open_via == "client":
            fig.open_p50_ms = round(percentile(rec.requests(), 50) * 1000, 1)
            fig.open_p99_ms = round(percentile(rec.requests(), 99) * 1000, 1)
        repeats = f" ({self.repeats} imports repeated after a 503)" if self.repeats else ""
        print(f"  {n + args.warmup:,} opened in {opening.seconds:.1f} s: {fig.opens_per_s:.1f}/s{repeats}", flush=True)

        worker.reset_peak_rss()
        await asyncio.sleep(args.hold)
        worker.check()
        fig.peak_holding_mb, fig.rss_held_mb = worker.peak_rss_mb(), rss_mb(worker.pid)
        fig.cache_size_held = self.metrics().get("sticky_cache_size")

        for i in range(args.warmup):  # the fresh worker's first updates, untimed
            await self.advance(ids[n + i], prepared[n + i][2], None)

        rec = Recorder()
        sql_file = self.stack.sql_counts_file(worker)
        sql0, m0, load0 = worker.sql_counts(sql_file), self.metrics(), os.getloadavg()[0]
        self.stack.procs["api"].reset_peak_rss()

        async def one(i: int) -> None:
            await self.advance(ids[i], prepared[i][2], rec)

        with Phase(watched, worker) as advancing:
            await in_lanes(range(n), args.concurrency, one)
        m1, sql1 = self.metrics(), worker.sql_counts(sql_file)
        fig.load = (load0, os.getloadavg()[0])
        fig.advances, fig.advance_seconds, fig.peak_advancing_mb = n, advancing.seconds, advancing.peak_mb
        fig.api_peak_mb = self.stack.procs["api"].peak_rss_mb()
        fig.advance_p50_ms = round(percentile(rec.requests(), 50) * 1000, 1)
        fig.advance_p99_ms = round(percentile(rec.requests(), 99) * 1000, 1)
        fig.cpu_ms_per_advance = advancing.ms_per(n)
        if sql0 is not None and sql1 is not None:
            statements = sum(v for k, v in (sql1 - sql0).items() if k not in ("#", "COMMIT") and not k.startswith("@"))
            fig.worker_sql_per_advance = round(statements / n, 1)
        if m0 and m1:
            fig.cache_hits = m1.get("sticky_cache_hit", 0) - m0.get("sticky_cache_hit", 0)
            fig.cache_misses = m1.get("sticky_cache_miss", 0) - m0.get("sticky_cache_miss", 0)
            evicted = "sticky_cache_total_forced_eviction"
            fig.forced_evictions = m1.get(evicted, 0) - m0.get(evicted, 0)
        fig.history_events = await self.sc.history_events("client", f"opportunity-{ids[0]}")
        print(f"  {n:,} advanced in {advancing.seconds:.1f} s: {fig.rate:.2f}/s", flush=True)
        return fig


def one_n(args: argparse.Namespace, n: int) -> Figures:
    """N on a stack of its own, stopped (and its temp dir removed) after."""
    tmp = Path(tempfile.mkdtemp(prefix="needflow-open-many-"))
    metrics_port = free_port()
    stack = None
    try:
        stack = start_stack(args, tmp, {"NEEDFLOW_METRICS_PORT": str(metrics_port)})
        print(f"N = {n:,}: stack up (Temporal {stack.address}, worker pid {stack.procs['worker'].pid})", flush=True)

        async def go() -> Figures:
            async with Scenarios(stack) as sc:
                return await OpenMany(sc, stack, args, metrics_port).run(n)

        return asyncio.run(go())
    except BenchError:
        if stack is not None:
            for proc in stack.procs.values():
                print(f"---- {proc.log_path} ----\n{proc.tail(15)}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        if args.keep:
            print(f"kept {tmp} (database, logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ================================================================ output


def _v(value: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def table(results: list[Figures]) -> str:
    base = results[0].rate
    out = [
        f"Opening and holding (opened via {results[0].open_via}; worker MB: RSS held, peaks from VmHWM):",
        "",
        "| open | opening s | opens/s | open p50 ms | open p99 ms | worker CPU ms / open | worker peak opening MB "
        "| worker RSS held MB | worker peak holding MB | workflows in the worker's cache |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in results:
        out.append(
            f"| {f.open:,} | {f.open_seconds:.1f} | {f.opens_per_s:.1f} | {_v(f.open_p50_ms)} | {_v(f.open_p99_ms)} | "
            f"{_v(f.cpu_ms_per_open.get('worker'))} | {_v(f.peak_opening_mb)} | {_v(f.rss_held_mb)} | "
            f"{_v(f.peak_holding_mb)} | {_v(f.cache_size_held)} |"
        )
    out += [
        "",
        f"Advancing each once (to Searching), {results[0].concurrency} at a time:",
        "",
        "| open | advances/s | × smallest N | p50 ms | p99 ms | worker peak advancing MB | worker CPU ms / advance "
        "| server CPU ms / advance | worker SQL / advance | cache hits | cache misses (replayed) | history events "
        "| load before → after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in results:
        out.append(
            f"| {f.open:,} | {f.rate:.2f} | {f.rate / base:.2f} | {f.advance_p50_ms:.0f} | {f.advance_p99_ms:.0f} | "
            f"{_v(f.peak_advancing_mb)} | {_v(f.cpu_ms_per_advance.get('worker'))} | "
            f"{_v(f.cpu_ms_per_advance.get('server'))} | {_v(f.worker_sql_per_advance, '{:.1f}')} | "
            f"{_v(f.cache_hits)} | {_v(f.cache_misses)} | {_v(f.history_events)} | "
            f"{f.load[0]:.2f} → {f.load[1]:.2f} |"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--open", default=DEFAULT_OPEN,
                   help=f"open opportunities held, comma-separated: one stack each (default {DEFAULT_OPEN})")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"advances at a time (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    p.add_argument("--open-concurrency", type=int, default=DEFAULT_OPEN_CONCURRENCY,
                   help=f"opens at a time (default {DEFAULT_OPEN_CONCURRENCY}); with import, // 32 requests")  # fmt: skip
    p.add_argument("--open-via", choices=["import", "client"], default="import",
                   help="POST /v1/imports, open opportunities (default); or Starts.open_opportunity as\n"
                        "POST /v1/opportunities opens one")  # fmt: skip
    p.add_argument("--hold", type=float, default=DEFAULT_HOLD,
                   help=f"seconds to hold them open before advancing (default {DEFAULT_HOLD:g})")  # fmt: skip
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"more opened with them and advanced first, untimed (default {DEFAULT_WARMUP})")  # fmt: skip
    p.add_argument("--temporal", metavar="ADDRESS", help="an existing Temporal server (host:port); default: start one")
    p.add_argument("--namespace", default="default")
    p.add_argument("--database-url", metavar="URL",
                   help="a PostgreSQL server (default DATABASE_URL) to make a fresh database on (dropped afterwards);\n"
                        "unset: a fresh SQLite file")  # fmt: skip
    add_setting_argument(p)
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep each N's temp dir (databases, logs) and print where")
    args = p.parse_args(argv)
    args.server_pragma = []  # start_stack's experiment, not used here
    args.sizes = [int(x) for x in args.open.split(",") if x.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.concurrency < 1 or args.open_concurrency < 1:
        p.error("--open sizes, --concurrency and --open-concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print(f"Machine: {machine()}", flush=True)
    given = settings_given(args)
    cache = given.get("NEEDFLOW_WORKFLOW_CACHE", Settings.model_fields["workflow_cache"].default)
    sandbox = given.get("NEEDFLOW_WORKFLOW_SANDBOX", Settings.model_fields["workflow_sandbox"].default)
    print(f"The worker's workflow cache: {cache} (NEEDFLOW_WORKFLOW_CACHE); sandbox: {sandbox}", flush=True)
    results = []
    try:
        for n in args.sizes:
            results.append(one_n(args, n))
    except BenchError as err:
        print(f"open-many bench failed: {err}", file=sys.stderr)
        return 1
    print()
    print(table(results))
    print()
    print(f"Machine: {machine()}")
    print(f"Whole run: {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([f.as_json(results[0].rate) for f in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
