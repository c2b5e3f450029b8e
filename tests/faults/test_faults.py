"""Faults during a load (issue 10, item 3): one test per fault, each during a load of
JOURNEYS whole journeys (tests/load.py: mortgages won by signature, declined, closed by
the owner; checking accounts opened) over two API processes, with clients that repeat a
call that failed, timed out or was cut off, with the same Idempotency-Key (events: the
same id), as the API's contract asks.

After each: every journey finished as driven and its workflow completed, every
opportunity's checkpoints are exactly its stages (seq 1..n), every event answered 202
is recorded exactly once (processed_events, one checkpoint's evidence) and applied once
by its workflow (its update accepted once in the history), and no other is, nothing was
made twice (customers, needs, opportunities, consents, signature requests, link
e-mails). tests/faults/stack.py has the stack and the checks; the table (fault,
journeys, finished, events lost and duplicated, the longest stall: the longest any one
call took to its final answer, its repeats included) is printed at the end of the run
and written to var/artifacts/faults.md.

`make faults` runs them (minutes each: not part of `make test`).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest

from tests.faults.stack import FaultStack, Struck, failing_while, run_load
from tests.load import Load
from tests.processes import busiest

#: A call waits this long for its answer, repeats included, before its journey fails.
#: Where a process dies mid-request, a repeat of a keyed command can wait for the
#: Idempotency-Key's lease (api/idempotency.py LEASE_SECONDS, 300 s) before it may do
#: the work: those faults allow for it.
PATIENT = 180.0
LEASE_PATIENT = 420.0


# ---------------------------------------------------------------------------- 1. the worker


def _hands(now: dict[str, float]) -> str:
    return (
        f"{now['workflow_slots']:g} workflow tasks, "
        f"{now['activity_slots'] + now['local_activity_slots']:g} activities in hand"
    )


#: How long no worker runs at all, after both are killed.
NO_WORKER = 5.0


async def _kill_workers(stack: FaultStack, load: Load) -> Struck:
    """SIGKILL the busiest worker at 25% and at 50% of the calls, each replaced at once by
    a new one (as a supervisor restarts it); at 75% both, and none runs for NO_WORKER s.
    Evidence: the killed workers that had a task in hand."""
    said, in_hand = [], []
    for share in (0.25, 0.5):
        await load.at(share).wait()
        victim, now = await busiest(stack.workers, seconds=2.0)
        if now["workflow_slots"] + now["activity_slots"] + now["local_activity_slots"] > 0:
            in_hand.append(f"{victim.name} ({_hands(now)})")
        began = time.monotonic()
        await stack.kill_worker(victim)
        fresh = await stack.start_worker()
        said.append(
            f"at {share:.0%} of the calls, SIGKILL {victim.name} ({_hands(now)}), "
            f"{fresh.name} started and polling {time.monotonic() - began:.1f} s later"
        )
    await load.at(0.75).wait()
    victims = list(stack.workers)
    for victim in victims:
        await stack.kill_worker(victim)
    began = time.monotonic()
    await asyncio.sleep(NO_WORKER)
    fresh = await asyncio.gather(*(stack.start_worker() for _ in victims))
    said.append(
        f"at 75%, SIGKILL both ({', '.join(v.name for v in victims)}), none running for {NO_WORKER:g} s, then "
        f"{' and '.join(f.name for f in fresh)} started, polling {time.monotonic() - began:.1f} s after the kill"
    )
    return Struck("; ".join(said) + ".", f"killed with work in hand: {', '.join(in_hand)}" if in_hand else "")


@pytest.mark.timeout(600)
async def test_workers_killed_mid_load(fault_stack: FaultStack) -> None:
    await run_load(fault_stack, "worker killed (kill -9) and restarted", _kill_workers, call_deadline=PATIENT)


# ---------------------------------------------------------------------------- 2. PostgreSQL


OUTAGE = 30.0


async def _stop_postgres(stack: FaultStack, load: Load) -> Struck:
    await load.at(0.3).wait()
    return await failing_while(load, _postgres_outage(stack))


async def _postgres_outage(stack: FaultStack) -> str:
    await stack.postgres.stop("immediate")
    await asyncio.sleep(OUTAGE)
    began = time.monotonic()
    await stack.postgres.start()
    return (
        f"at 30% of the calls, PostgreSQL stopped (immediate: SIGQUIT, every backend gone at once, as in a crash) "
        f"for {OUTAGE:g} s, then started again: accepting {time.monotonic() - began:.1f} s later, after its WAL recovery."
    )


@pytest.mark.timeout(900)
async def test_postgres_stopped_for_30_seconds(fault_stack: FaultStack) -> None:
    await run_load(fault_stack, "PostgreSQL stopped for 30 s", _stop_postgres, call_deadline=LEASE_PATIENT)


# ---------------------------------------------------------------------------- 3. the dev server


async def _restart_temporal(stack: FaultStack, load: Load) -> Struck:
    await load.at(0.3).wait()
    return await failing_while(load, _temporal_restarts(stack, load))


async def _temporal_restarts(stack: FaultStack, load: Load) -> str:
    said = []
    for share, how in ((0.3, signal.SIGTERM), (0.65, signal.SIGKILL)):
        await load.at(share).wait()
        began = time.monotonic()
        await stack.processes.restart_temporal(how)
        said.append(
            f"at {share:.0%} of the calls, the dev server stopped with {how.name} and started again on the same "
            f"port and file, serving {time.monotonic() - began:.1f} s later"
        )
    return "; ".join(said) + "."


@pytest.mark.timeout(600)
async def test_temporal_dev_server_restarted(fault_stack: FaultStack) -> None:
    await run_load(fault_stack, "Temporal dev server restarted (SQLite file)", _restart_temporal, call_deadline=PATIENT)


# ---------------------------------------------------------------------------- 4. events twice, out of order


async def _no_process_fault(stack: FaultStack, load: Load) -> Struck:
    """Evidence: the events refused out of turn (run_load counts them)."""
    return Struck(
        "every event sent twice at once (one copy to each API) and once more at its journey's end; every other "
        "journey sent one event before its turn (approved or declined before submitted, the account opened before "
        "the consent, an application after the owner closed the opportunity), refused 409, then in its turn under "
        "the same id.",
        "",
    )


@pytest.mark.timeout(600)
async def test_every_event_twice_and_some_out_of_order(fault_stack: FaultStack) -> None:
    await run_load(
        fault_stack,
        "every event twice, some out of order",
        _no_process_fault,
        call_deadline=PATIENT,
        copies=True,
        out_of_order=True,
    )


# ---------------------------------------------------------------------------- 5. the API


KILLS = 8


async def _kill_apis(stack: FaultStack, load: Load) -> Struck:
    """SIGKILL an API process at random moments under load (hundreds of requests in
    flight: some between their database write and their answer), KILLS times, the next a
    few seconds after the last one is back; each restarted on its port at once. The
    clients repeat the calls cut off at the other API.

    Timed by the clock, not by the share of the load answered: a keyed call cut off
    mid-request waits out its key's lease (300 s), during which the load barely moves; a
    kill timed by the load would then come when the leases run out and cut off the very
    requests that took them over, each starting a new lease."""
    await load.at(0.05).wait()
    return await failing_while(load, _api_kills(stack))


async def _api_kills(stack: FaultStack) -> str:
    rng = random.Random(5)
    began = time.monotonic()
    downtimes = []
    for n in range(KILLS):
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        api = stack.apis[n % 2]
        down = time.monotonic()
        await stack.kill_api(api)
        await stack.restart_api(api)
        downtimes.append(time.monotonic() - down)
    return (
        f"{KILLS} times in {time.monotonic() - began:.0f} s from 5% of the calls answered, SIGKILL one API process "
        f"(alternately) with requests in hand, restarted on its port at once: down {min(downtimes):.1f} to "
        f"{max(downtimes):.1f} s each."
    )


@pytest.mark.timeout(900)
async def test_api_killed_between_write_and_answer(fault_stack: FaultStack) -> None:
    await run_load(fault_stack, "API killed mid-request (kill -9), 8 times", _kill_apis, call_deadline=LEASE_PATIENT)
