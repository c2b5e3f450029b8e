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
from workflows.opportunity import LEAN_HISTORY

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


def test_every_path_has_a_saved_history() -> None:
    assert sorted(p.stem for p in HISTORIES.glob("*.json")) == sorted(
        PATHS + RECORDED_BY_OLDER_CODE + RECORDED_BEFORE_LEAN_HISTORY + RECORDED_UNDER_THE_FIRST_LEAN_ID
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
        "referral-escalated-closed": journeys.referral_escalated_closed(following_up_api, smtp_inbox),
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
        if resource["workflow_id"].startswith("opportunity-"):  # a new run records the lean id alone
            assert _patch_ids(history) == {LEAN_HISTORY}, (name, _patch_ids(history))
        saved = HISTORIES / f"{name}.json"
        if record and not saved.exists():  # never overwrite: old histories must keep replaying
            saved.write_text(history.to_json())  # noqa: ASYNC240 (a small local file)
