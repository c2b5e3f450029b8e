"""Scale-out (issue 9, item 6): the worker and the API keep no state beside Temporal and
the database, so any number of each can run, and any one can die.

Two workers (`python worker.py`) and two API processes (uvicorn), all real processes on
one Temporal dev server and one PostgreSQL database, as docs/deployment.md describes a
deployment. A load of whole journeys (mortgages won by signature, lost by the lender's
decline or by the owner; checking accounts opened) goes to both APIs alternately, as a
load balancer would send it; every command carries an Idempotency-Key (events their
event id), so a client may retry a call that timed out or failed with a 5xx, and the
test does so, against the other API. When a share of the calls has been answered, one
worker is killed with SIGKILL: no graceful shutdown, its workflow tasks and activities
in flight are lost with it, and Temporal has to give them to the other worker.

Then every journey must have finished as it was driven (won or lost at the stage the
customer reached), and the database must hold, for each opportunity, exactly one
checkpoint per stage it passed (seq 1..n, no gap, no duplicate), each event applied
exactly once, one consent where the process records one, one signature request (and one
e-mail with its link) per signed mortgage; and every workflow must have completed.

PostgreSQL only. Four processes writing one SQLite file is not a deployment needflow
supports (docs/deployment.md: PostgreSQL); the suite's SQLite run skips this test and its
PostgreSQL run (`make test-pg`, and CI's second pass) runs it, so it runs once in CI.
The figures (journeys, retries, what the killed worker had in flight, which tasks were
lost with it) are printed: `pytest -s -k scale_out` shows them. The journeys and the
check of the record are tests/load.py's, which the fault tests (tests/faults/) share.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client

from devstack.children import Child
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.load import (
    MIX,
    PATHS,
    Journey,
    Load,
    assert_recorded_once,
    drive,
    interleaved,
    journeys,
    staff,
    wait_completed,
)
from tests.processes import ProcessStack, Worker, busiest

#: How many journeys of each kind (tests/load.py: the mix every load has).
LOAD = MIX
#: The worker is killed once this share of all the load's calls has been answered, as
#: soon as one has an activity in hand (or after KILL_WAIT seconds anyway).
KILL_AT = 0.4
KILL_WAIT = 2.0
#: Journeys start this far apart, so the load is a stream rather than one burst.
STAGGER = 0.1
#: A client gives up on one attempt after this long and retries (the other API).
ATTEMPT_TIMEOUT = 20.0
#: A call's deadline over all its attempts. A task lost with the killed worker waits for
#: its timeout (a workflow task 10 s, an activity workflows.common.ACTIVITY_TIMEOUT, 30 s)
#: before the other worker gets it.
CALL_DEADLINE = 70.0


def _on_postgresql() -> str | None:
    base = test_database_base_url()
    if base and make_url(base).get_backend_name() in ("postgresql", "postgres"):
        return base
    return None


pytestmark = [
    pytest.mark.skipif(
        _on_postgresql() is None,
        reason="scale-out runs two workers and two API processes on one database: PostgreSQL only "
        "(DATABASE_URL unset: this run is on SQLite; `make test-pg` runs it)",
    ),
    # The stack's start (about 10 s) and a task lost with the killed worker (up to 30 s)
    # come on top of the load: more than the suite's 90 s default would leave spare.
    pytest.mark.timeout(120),
]


# ---------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    processes: ProcessStack
    client: Client
    api_urls: list[str]
    workers: list[Worker]
    apis: list[Child]
    key: str
    database_url: str
    log_dir: Path


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    base = _on_postgresql()
    assert base is not None
    started = time.monotonic()
    with fresh_database_url(base) as database_url:
        processes = ProcessStack(tmp_path / "logs", database_url)
        try:
            processes.start_temporal()
            up = await processes.serve_two_of_each("scale-out")
            print(f"\n[scale-out] stack up in {time.monotonic() - started:.1f} s; logs in {processes.log_dir}")
            yield Stack(
                processes,
                up.client,
                [a.url for a in up.apis],
                up.workers,
                [a.child for a in up.apis],
                up.key,
                database_url,
                processes.log_dir,
            )
        finally:
            processes.stop()


# ---------------------------------------------------------------------------- the test


async def test_a_worker_killed_mid_load_loses_no_journey(stack: Stack) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
        load = Load(
            http,
            stack.api_urls,
            stack.key,
            stagger=STAGGER,
            attempt_timeout=ATTEMPT_TIMEOUT,
            call_deadline=CALL_DEADLINE,
        )
        driven = journeys(load, interleaved(LOAD), await staff(load))
        began = time.monotonic()
        killer = asyncio.create_task(_kill_one_worker(stack, load, began))
        try:
            await drive(driven)  # the first failure cancels the rest
        finally:
            if not killer.done():
                killer.cancel()
        load_seconds = time.monotonic() - began
        kill = await killer

    # Every journey ended as it was driven; the API says so.
    for j in driven:
        status, stages = PATHS[j.kind]
        opp = j.opportunity
        assert (opp["status"], [c["stage"] for c in opp["checkpoints"]]) == (status, stages), (j.name, opp)

    # Every workflow completed (none stuck behind the killed worker).
    assert await wait_completed(stack.client, driven, seconds=30) == []

    assert_recorded_once(stack.database_url, driven)
    assert not load.anomalies, load.anomalies

    # The killed worker had taken part (so the others took over its work), and is gone.
    tasks = await _who_did_what(stack.client, [j.opportunity["workflow_id"] for j in driven])
    killed, survivor = kill.killed, kill.survivor
    assert killed.child.poll() == -signal.SIGKILL
    assert tasks.workflow_tasks[killed.identity] > 0, tasks
    assert tasks.workflow_tasks[survivor.identity] > 0, tasks
    for child in [survivor.child, *stack.apis]:
        assert child.poll() is None, f"{child.name} died; see {child.log_path}"

    _summary(driven, load, load_seconds, kill, tasks, stack.log_dir)


# ---------------------------------------------------------------------------- the pieces


@dataclass
class Kill:
    killed: Worker
    survivor: Worker
    at_seconds: float
    answered: int
    in_flight: dict[str, float]


async def _kill_one_worker(stack: Stack, load: Load, began: float) -> Kill:
    """When KILL_AT of the calls are answered: SIGKILL a worker while it has work in hand
    (by its metrics: task slots in use), an activity if one has any within KILL_WAIT
    (its database write may be done or not: either way a retry must not write it twice),
    else the one with the most in hand."""
    await load.at(KILL_AT).wait()
    killed, in_flight = await busiest(stack.workers, seconds=KILL_WAIT)
    (survivor,) = (w for w in stack.workers if w is not killed)
    os.kill(killed.child.proc.pid, signal.SIGKILL)
    killed.child.proc.wait(timeout=10)
    return Kill(killed, survivor, time.monotonic() - began, load.answered, in_flight)


@dataclass
class Tasks:
    """Who did what, read from the workflows' histories (the identity is pid@host)."""

    workflow_tasks: collections.Counter = field(default_factory=collections.Counter)
    activities: collections.Counter = field(default_factory=collections.Counter)
    #: Workflow tasks that timed out: lost with a worker (start-to-close) or waiting on a
    #: dead worker's sticky queue (schedule-to-start).
    workflow_task_timeouts: collections.Counter = field(default_factory=collections.Counter)
    #: Activities retried after a timeout: an attempt lost with a worker.
    activities_retried_after_timeout: collections.Counter = field(default_factory=collections.Counter)
    workflows_touched: set = field(default_factory=set)


async def _who_did_what(client: Client, workflow_ids: list[str]) -> Tasks:
    tasks = Tasks()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        taken_by = ""
        activity_types = {}
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                activity_types[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                taken_by = e.workflow_task_started_event_attributes.identity
                tasks.workflow_tasks[taken_by] += 1
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = e.activity_task_started_event_attributes
                tasks.activities[started.identity] += 1
                if started.attempt > 1 and started.last_failure.HasField("timeout_failure_info"):
                    tasks.activities_retried_after_timeout[activity_types.get(started.scheduled_event_id, "?")] += 1
                    tasks.workflows_touched.add(workflow_id)
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                kind = e.workflow_task_timed_out_event_attributes.timeout_type
                if kind == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE:  # taken, never answered
                    tasks.workflow_task_timeouts[f"taken by {taken_by or 'an unrecorded worker'} (never answered)"] += 1
                else:  # waited on a sticky queue no worker polled any more
                    tasks.workflow_task_timeouts["unpolled sticky queue"] += 1
                tasks.workflows_touched.add(workflow_id)
    return tasks


def _summary(journeys: list[Journey], load: Load, load_seconds: float, kill: Kill, tasks: Tasks, log_dir: Path) -> None:
    """Print the run's figures (`pytest -s` shows them) and keep them beside the logs."""
    kinds = collections.Counter(j.kind for j in journeys)
    names = {w.identity: w.name for w in (kill.killed, kill.survivor)}
    timeouts = ", ".join(
        f"{n} {' '.join(names.get(word, word) for word in why.split())}"
        for why, n in tasks.workflow_task_timeouts.items()
    )
    slowest = max(journeys, key=lambda j: j.seconds)
    lines = [
        f"journeys: {len(journeys)} ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
        f"{load.total_calls} calls over 2 APIs, all finished as driven, in {load_seconds:.1f} s",
        f"killed {kill.killed.name} ({kill.killed.identity}) with SIGKILL {kill.at_seconds:.1f} s in, "
        f"after {kill.answered}/{load.total_calls} calls; in its hands then (metrics): "
        f"{kill.in_flight['workflow_slots']:g} workflow task(s), {kill.in_flight['activity_slots']:g} activity(ies); "
        f"it had done {kill.in_flight['workflow_tasks_done']:g} workflow tasks, "
        f"{kill.in_flight['activities_done']:g} activities",
        "workflow tasks by worker: "
        + ", ".join(f"{w.name} {tasks.workflow_tasks[w.identity]}" for w in (kill.killed, kill.survivor))
        + "; activities by worker: "
        + ", ".join(f"{w.name} {tasks.activities[w.identity]}" for w in (kill.killed, kill.survivor)),
        f"workflow task timeouts: {timeouts or 'none'}; "
        f"activities retried after a timeout: {dict(tasks.activities_retried_after_timeout) or 'none'}, "
        f"in {len(tasks.workflows_touched)} workflow(s)",
        f"client retries: {sum(1 for r in load.retries if not r[3].startswith('answered'))}"
        + "".join(f"\n    {name} {what} attempt {n}: {why}" for name, what, n, why in load.retries),
        f"slowest call {load.slowest[0]:.1f} s ({load.slowest[1]}); slowest journey {slowest.seconds:.1f} s "
        f"({slowest.name}); median journey {sorted(j.seconds for j in journeys)[len(journeys) // 2]:.1f} s",
    ]
    text = "[scale-out] " + "\n[scale-out] ".join(lines)
    (log_dir / "summary.txt").write_text(text + "\n")
    print("\n" + text)
