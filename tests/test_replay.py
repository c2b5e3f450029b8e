"""Determinism: saved histories of finished workflows replay against the current code.

tests/histories/ holds one history per path a workflow can take, recorded from real
runs: won by signature (mortgage, insurance, wealth), declined then resent, opened by
SMS consent, closed lost by hand and by a backend event; converted, rejected and
reassigned, lapsed (the acceptance timer fired), escalated (the follow-up timers fired);
an imported open mortgage resumed at its last stage and won; one daily review run started
by its Temporal Schedule, e-mailing a manager new exceptions.
A change to workflow code that would break a running workflow makes these fail: such a
change needs `workflow.patched` (or a new workflow type), never a re-recorded history.

Recording only ever adds: `NEEDFLOW_RECORD_HISTORIES=1 make test PYTEST_ARGS='-k fresh'`
writes the history of a journey that has no file yet and leaves every saved one alone —
the old ones are the point. To record a new path, add its journey below.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from config import Settings
from tests import journeys
from tests.helpers import Api, Inbox, serve_app, within
from worker import WORKFLOWS
from workflows.client import DATA_CONVERTER

HISTORIES = Path(__file__).parent / "histories"

#: Every path the corpus must keep (a file per name in tests/histories/).
PATHS = [
    "mortgage-closed-won",
    "mortgage-declined-resent-won",
    "mortgage-closed-lost-by-owner",
    "mortgage-lost-by-event",
    "insurance-closed-won",
    "wealth-closed-won",
    "checking-opened",
    "referral-converted",
    "referral-rejected-reassigned-closed",
    "referral-lapsed-closed",
    "referral-escalated-closed",
    "mortgage-imported-resumed-won",
    "daily-review",
]


def _patch_ids(history: WorkflowHistory) -> set[str]:
    """The patch ids a history's markers record (their details are plain JSON payloads)."""
    return {
        json.loads(payload.data)["id"]
        for event in history.events
        if event.HasField("marker_recorded_event_attributes")
        for details in event.marker_recorded_event_attributes.details.values()
        for payload in details.payloads
    }


def _replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=DATA_CONVERTER)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())  # noqa: ASYNC240 (a small local file)
    await within(_replayer().replay_workflow(history), f"replaying {path.name}", seconds=30)


#: Histories recorded by the code as it was before the workflows were refactored (commit
#: 26bffb3): the refactor and every later change must keep replaying what older code
#: wrote — a workflow started then may still be running. They cover the paths the SLA
#: timer rewrite touches, and a stage entered with blank evidence (allowed then, refused
#: since, so the handlers decide it through `workflow.patched`).
RECORDED_BY_OLDER_CODE = [
    "v0-blank-realtor-lost",
    "v0-closed-lost-with-signature",
    "v0-escalated-closed",
    "v0-lapsed-twice-closed",
    "v0-reminded-converted",
]

#: Every path as the code recorded it at commit 7e8b4f5, before the history was made
#: leaner (issue 10: a signature requested in the stage change's own activity, search
#: attributes upserted only when one changes, the blank-evidence patch asked only where
#: evidence is blank). Workflows started then may still be running.
RECORDED_BEFORE_LEAN_HISTORY = [f"v1-{path}" for path in PATHS]


#: Every path as the code recorded it at commit 181c976 (released at stop 12): the lean
#: history under its first patch id, `lean-history`, renamed `lean-history-2` since; runs
#: started then carry the first id and must keep replaying (workflows/opportunity.py).
RECORDED_UNDER_THE_FIRST_LEAN_ID = [f"v2-{path}" for path in PATHS]

#: Every path as the code recorded it at commit b53bd2c (released at stop 14): lean runs
#: that asked `lean-history-2` and referrals that asked `notices-with-their-write`, before
#: a run's input carried its history format. Runs started then must keep replaying.
RECORDED_UNDER_LEAN_HISTORY_2 = [f"v3-{path}" for path in PATHS]

#: Every path as recorded by history format 1 (the input says how a run records; no patch
#: marker), the format runs start with now.
RECORDED_IN_FORMAT_1 = [f"v4-{path}" for path in PATHS]


async def _as_if_started_in_format_1(history: WorkflowHistory) -> WorkflowHistory:
    """`history` with its start input saying history format 1: what a run started by
    current code, whose first workflow task a worker older than the format ran (it ignored
    the field, asked the patch and recorded its marker), looks like."""
    started = history.events[0].workflow_execution_started_event_attributes
    codec = DATA_CONVERTER.payload_codec
    assert codec is not None
    (plain,) = await codec.decode([started.input.payloads[0]])
    fields = json.loads(plain.data)
    assert fields.get("history_format", 0) == 0  # recorded before the format
    fields["history_format"] = 1
    plain.data = json.dumps(fields).encode()
    (sealed,) = await codec.encode([plain])
    started.input.payloads[0].CopyFrom(sealed)
    return history


@pytest.mark.parametrize(
    "name", ["v3-mortgage-closed-won", "v2-mortgage-closed-won", "v3-referral-converted", "v2-referral-converted"]
)
async def test_a_format_1_run_whose_first_task_an_older_worker_ran_replays(name: str) -> None:
    """A rolling deploy: current code started the run (format 1 in its input) and a worker
    not yet upgraded ran its first task, recording the patch marker. Current workers must
    replay it (workflows/common.py `takes_patch`); without that, the SDK
    fails the replay ("Non-deprecated patch marker encountered … no corresponding change
    command") and the run is stuck for good."""
    path = HISTORIES / f"{name}.json"
    history = WorkflowHistory.from_json(name, path.read_text())  # noqa: ASYNC240 (a small local file)
    assert _patch_ids(history)  # the marker an older worker records
    await within(
        _replayer().replay_workflow(await _as_if_started_in_format_1(history)), f"replaying {name}", seconds=30
    )


def test_every_path_has_a_saved_history() -> None:
    assert sorted(p.stem for p in HISTORIES.glob("*.json")) == sorted(
        PATHS
        + RECORDED_BY_OLDER_CODE
        + RECORDED_BEFORE_LEAN_HISTORY
        + RECORDED_UNDER_THE_FIRST_LEAN_ID
        + RECORDED_UNDER_LEAN_HISTORY_2
        + RECORDED_IN_FORMAT_1
    )


@asynccontextmanager
async def _api_with(api: Api, client: Client, settings: Settings, task_queue: str, **slas: float) -> AsyncIterator[Api]:
    """The API with one SLA short enough for its timer to fire during the test (the
    session's worker serves it: SLAs travel in the workflow's input). Only one: a short
    acceptance SLA would race the accept of the follow-up journey."""
    async with serve_app(settings.model_copy(update=slas), client, task_queue) as http:
        yield Api(http, api.key)


@pytest_asyncio.fixture
async def lapsing_api(
    client: Client, settings: Settings, task_queue: str, worker: None, api: Api
) -> AsyncIterator[Api]:
    async with _api_with(api, client, settings, task_queue, referral_accept_sla=0.3) as fast:
        yield fast


@pytest_asyncio.fixture
async def following_up_api(
    client: Client, settings: Settings, task_queue: str, worker: None, api: Api
) -> AsyncIterator[Api]:
    async with _api_with(api, client, settings, task_queue, referral_followup_sla=0.3) as fast:
        yield fast


async def test_fresh_journeys_replay(
    api: Api,
    lapsing_api: Api,
    following_up_api: Api,
    client: Client,
    settings: Settings,
    task_queue: str,
    smtp_inbox: Inbox,
) -> None:
    runs = {
        "mortgage-closed-won": journeys.mortgage_to_closed_won(api),
        "mortgage-declined-resent-won": journeys.mortgage_to_closed_won(api, decline_first=True),
        "mortgage-closed-lost-by-owner": journeys.mortgage_closed_lost_by_owner(api),
        "mortgage-lost-by-event": journeys.mortgage_lost_by_event(api),
        "insurance-closed-won": journeys.proposal_to_closed_won(api, "insurance"),
        "wealth-closed-won": journeys.proposal_to_closed_won(api, "wealth"),
        "checking-opened": journeys.checking_to_opened(api),
        "referral-converted": journeys.referral_converted(api),
        "referral-rejected-reassigned-closed": journeys.referral_rejected_reassigned_closed(api),
        "referral-lapsed-closed": journeys.referral_lapsed_closed(lapsing_api),
        "referral-escalated-closed": journeys.referral_escalated_closed(following_up_api),
        "mortgage-imported-resumed-won": journeys.mortgage_imported_resumed_won(api),
        "daily-review": journeys.daily_review_mails_a_manager(api, client, settings, task_queue, smtp_inbox),
    }
    assert sorted(runs) == sorted(PATHS)
    # Side by side (each journey has its own staff and territory): the timer paths wait.
    finished = dict(zip(runs, await asyncio.gather(*runs.values()), strict=True))
    record = bool(os.environ.get("NEEDFLOW_RECORD_HISTORIES"))
    for name, resource in finished.items():
        handle = client.get_workflow_handle(resource["workflow_id"])
        await within(handle.result(), f"the {name} workflow to finish")
        history = await within(handle.fetch_history(), f"the {name} history")
        await within(_replayer().replay_workflow(history), f"replaying the fresh {name}", seconds=30)
        if resource["workflow_id"].startswith(("opportunity-", "referral-")):
            # A new run is lean by its input (history format 1): it asks no patch marker.
            assert _patch_ids(history) == set(), (name, _patch_ids(history))
        saved = HISTORIES / f"{name}.json"
        if record and not saved.exists():  # never overwrite: old histories must keep replaying
            saved.write_text(history.to_json())  # noqa: ASYNC240 (a small local file)
