"""The stack a fault test breaks, the load it drives through the fault, and the report.

`FaultStack`: needflow as a deployment runs it, every part a real process on 127.0.0.1
(tests/processes.py): a Temporal dev server keeping its state in a file (as `make run`
does: a restart keeps every workflow), a PostgreSQL cluster of the test's own (so that
the test may stop it; never the machine's shared server), two workers and two API
processes.

`run_load`: JOURNEYS whole journeys (tests/load.py) over both APIs while `fault` does
its damage, then every check: every journey finished as driven and its workflow
completed; the record exact (tests/load.py `check_recorded`: checkpoints seq 1..n, each
event answered 202 recorded exactly once, nothing made twice) and each such event applied
once by its workflow (`check_applied`). Its row goes into the fault table, printed at
the end of the run and written to var/artifacts/faults.md, before the test asserts: a
failed run reports what it found too, and keeps its logs in var/artifacts/faults/.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from temporalio.client import Client
from temporalio.service import RPCError

from config import PROJECT_ROOT
from tests.load import (
    Journey,
    Load,
    Recorded,
    check_applied,
    check_recorded,
    drive,
    ended_as_driven,
    interleaved,
    journeys,
    mix,
    staff,
    wait_completed,
)
from tests.processes import ApiProcess, PrivatePostgres, ProcessStack, Worker, http_ok

#: Journeys in each fault's load (the issue: at least 200).
JOURNEYS = 200
#: The fault table, rewritten after every fault test (var/ is not in git).
TABLE = PROJECT_ROOT / "var" / "artifacts" / "faults.md"
#: Where a fault test that found problems keeps its logs, histories and problems.txt.
EVIDENCE = PROJECT_ROOT / "var" / "artifacts" / "faults"


@dataclass
class FaultStack:
    processes: ProcessStack
    postgres: PrivatePostgres
    client: Client
    workers: list[Worker]
    apis: list[ApiProcess]
    key: str
    public_url: str
    _names: itertools.count = field(default_factory=lambda: itertools.count(3))

    @property
    def api_urls(self) -> list[str]:
        return [api.url for api in self.apis]

    @property
    def database_url(self) -> str:
        return self.postgres.url

    async def kill_worker(self, worker: Worker) -> None:
        await self.processes.kill(worker.child, signal.SIGKILL)
        self.workers.remove(worker)

    async def start_worker(self) -> Worker:
        """A new worker process (as a supervisor restarts one), polling before this returns."""
        worker = self.processes.start_metered_worker(f"worker-{next(self._names)}", self.public_url)
        self.workers.append(worker)
        await self.processes.serving([worker], [])
        return worker

    async def kill_api(self, api: ApiProcess) -> None:
        await self.processes.kill(api.child, signal.SIGKILL)

    async def restart_api(self, api: ApiProcess) -> None:
        """The same API again on its port (as a supervisor restarts it), answering before this returns."""
        api.child = self.processes.start_api(api.name, api.port, NEEDFLOW_PUBLIC_BASE_URL=self.public_url)
        await self.processes.wait_until(f"{api.url}/healthz", lambda: http_ok(f"{api.url}/healthz"), 60)

    def still_running(self) -> list[str]:
        """The children that died though no fault killed them."""
        return [
            f"{child.name} exited {child.poll()}; see {child.log_path}"
            for child in self.processes.children.running
            if child.poll() is not None
        ]


# ---------------------------------------------------------------------------- the load


@dataclass
class Row:
    fault: str
    journeys: int
    finished: int
    events: int
    events_lost: int
    events_duplicated: int
    rows_duplicated: int
    longest_stall: float
    stalled_call: str
    anomalies: int
    load_seconds: float
    what_happened: str


#: This run's rows, in the order the tests ran.
ROWS: list[Row] = []


def table() -> str:
    lines = [
        f"Fault tests (`make faults`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: each fault during a load of "
        f"{JOURNEYS} journeys over 2 API processes.",
        "",
        "| fault | journeys | finished | events answered 202 | events lost | events duplicated "
        "| rows duplicated | journeys with an anomaly | longest stall | load took |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in ROWS:
        lines.append(
            f"| {r.fault} | {r.journeys} | {r.finished} | {r.events} | {r.events_lost} | {r.events_duplicated} "
            f"| {r.rows_duplicated} | {r.anomalies} | {r.longest_stall:.1f} s | {r.load_seconds:.0f} s |"
        )
    lines += ["", "What each fault did, and the longest stall's call:", ""]
    lines += [f"- **{r.fault}**: {r.what_happened} Longest stall: {r.stalled_call}." for r in ROWS]
    return "\n".join(lines) + "\n"


def report(row: Row) -> None:
    ROWS.append(row)
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(table())


@dataclass
class Struck:
    """What a fault did, in words, and what shows it touched the load (work in hand when a
    worker was killed, attempts that failed while it lasted). No evidence: it touched
    nothing, and the run would prove nothing; `run_load` counts that a problem."""

    said: str
    evidence: str


async def failing_while(load: Load, fault: Awaitable[str]) -> Struck:
    """Run `fault` (it returns what it did); the evidence is the attempts that failed
    meanwhile."""
    before = load.failed_attempts()
    said = await fault
    failed = load.failed_attempts() - before
    return Struck(said, f"{failed} attempts failed while it lasted" if failed else "")


Fault = Callable[[FaultStack, Load], Awaitable[Struck]]


async def run_load(
    stack: FaultStack,
    name: str,
    fault: Fault,
    *,
    call_deadline: float,
    copies: bool = False,
    out_of_order: bool = False,
) -> None:
    """JOURNEYS journeys while `fault(stack, load)` runs (it waits for its moment with
    `load.at(share)` and returns what it did, in words); then the checks and the report."""
    began = time.monotonic()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=600)) as http:
        load = Load(
            http,
            stack.api_urls,
            stack.key,
            stagger=0.1,
            call_deadline=call_deadline,
            copies=copies,
            out_of_order=out_of_order,
        )
        driven = journeys(load, interleaved(mix(JOURNEYS)), await staff(load))
        doing = asyncio.create_task(fault(stack, load))
        failures = await drive(driven, first_failure_stops=False)
        if not doing.done():
            doing.cancel()
        try:
            struck: Struck | None = await doing
            what_happened = struck.said
        except asyncio.CancelledError:
            struck, what_happened = None, "NOT DONE: the load ended before the fault's moment."
        load_seconds = time.monotonic() - began

    unfinished = await wait_completed(stack.client, driven, seconds=60)
    recorded: Recorded = await asyncio.to_thread(check_recorded, stack.database_url, driven)
    await check_applied(stack.client, driven, recorded)
    stuck = {u.split(":")[0] for u in unfinished}
    finished = sum(1 for j in driven if ended_as_driven(j) and j.name not in stuck)
    cut = ", ".join(f"{n} {how}" for how, n in load.cut_off.most_common())
    repeated = load.repeated()
    why = ", ".join(f"{n} after {how}" for how, n in repeated.most_common())
    refused = sum(len(j.refused) for j in driven)
    if copies or out_of_order:
        what_happened += f" {refused} events refused out of turn (every copy 409), each applied later in its turn."
    missed = struck is not None and not struck.evidence and not (out_of_order and refused)
    if struck is not None and struck.evidence:
        what_happened += f" It struck: {struck.evidence}."
    what_happened += (
        f" Clients repeated {sum(repeated.values())} attempts"
        + (f" ({why})" if why else "")
        + (
            f"; {sum(load.cut_off.values())} calls lost their connection mid-request (its process died, or closed it after a 500), their repeats: {cut}"
            if cut
            else ""
        )
        + (
            f"; {recorded.keys_reserved} Idempotency-Keys left reserved without an answer"
            if recorded.keys_reserved
            else ""
        )
        + (
            f"; {len(recorded.events_unanswered)} events recorded though never answered 202"
            if recorded.events_unanswered
            else ""
        )
        + "."
    )
    suspects = [
        j
        for j in driven
        if j.anomalous or not ended_as_driven(j) or j.name in stuck or any(j.name in p for p in recorded.problems)
    ]
    await _keep_histories(stack, suspects[:10])
    if load.anomalies:
        what_happened += f" ANOMALIES ({len(load.anomalies)}): " + "; ".join(load.anomalies[:5]) + "."
    row = Row(
        fault=name,
        journeys=len(driven),
        finished=finished,
        events=recorded.events,
        events_lost=len(recorded.events_lost),
        events_duplicated=len(recorded.events_duplicated),
        rows_duplicated=len(recorded.rows_duplicated),
        longest_stall=load.slowest[0],
        stalled_call=load.slowest[1],
        anomalies=sum(1 for j in driven if j.anomalous),
        load_seconds=load_seconds,
        what_happened=what_happened,
    )
    report(row)
    print(f"\n[faults] {name}: {finished}/{len(driven)} finished, {row.events} events, {row.events_lost} lost, "
          f"{row.events_duplicated} duplicated, {row.rows_duplicated} rows duplicated, longest stall "
          f"{row.longest_stall:.1f} s ({row.stalled_call}), load {load_seconds:.0f} s\n[faults] {what_happened}"
          f"\n[faults] logs in {stack.processes.log_dir}")  # fmt: skip

    problems = [
        *([what_happened] if what_happened.startswith("NOT DONE") else []),
        *([f"the fault touched nothing (no work in hand, no attempt failed): {what_happened}"] if missed else []),
        *(f"journey failed: {failure}"[:2000] for failure in failures),
        *(f"workflow not completed: {u}" for u in unfinished),
        *recorded.problems,
        *(f"anomaly: {a}" for a in load.anomalies),
        *(f"died: {d}" for d in stack.still_running()),
    ]
    if finished != len(driven) and not problems:
        problems.append(f"only {finished} of {len(driven)} journeys ended as driven")
    names = {j.name for j in suspects}
    trail = [f"  {who} {what} attempt {n}: {why}" for who, what, n, why in load.retries if who in names]
    (stack.processes.log_dir / "problems.txt").write_text(
        "\n".join([*problems, "", "the repeated calls of those journeys:", *trail]) + "\n"
    )
    if problems:  # the evidence, where pytest's rotation of its temp dirs leaves it
        slug = re.sub(r"[^a-z0-9]+", "-", name.split(" (")[0].lower()).strip("-")
        kept = EVIDENCE / f"{slug}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        shutil.copytree(stack.processes.log_dir, kept, ignore=shutil.ignore_patterns("data"))
        shown = "\n  ".join(p[:600] for p in problems[:15])
        raise AssertionError(f"{len(problems)} problems (all in {kept / 'problems.txt'}):\n  {shown}")


async def _keep_histories(stack: FaultStack, suspects: list[Journey]) -> None:
    """The histories of journeys that failed or got an anomalous answer, as evidence,
    beside the logs (their payloads encrypted with the test key; the events' times and
    types are in clear)."""
    kept = stack.processes.log_dir / "histories"
    kept.mkdir(exist_ok=True)
    for j in suspects:
        workflow_id = j.opportunity.get("workflow_id") or f"opportunity-{j.opportunity.get('id')}"
        if not j.opportunity.get("id"):
            continue
        try:
            history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
        except RPCError as exc:
            (kept / f"{workflow_id}.txt").write_text(f"no history: {exc}\n")
            continue
        (kept / f"{workflow_id}.json").write_text(history.to_json())
