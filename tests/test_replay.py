"""Determinism: saved histories of finished workflows replay against the current code.

The histories in tests/histories/ were recorded from real runs. A change to workflow
code that would break running workflows makes these fail; such a change needs
`workflow.patched` (or a new workflow type), not new histories. To record histories of
the current code (after adding a journey, say): NEEDFLOW_RECORD_HISTORIES=1 make test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from tests.helpers import Api
from tests.journeys import (
    checking_to_opened,
    mortgage_to_closed_won,
    referral_converted,
    referral_rejected_reassigned_closed,
)
from worker import WORKFLOWS
from workflows.client import DATA_CONVERTER

HISTORIES = Path(__file__).parent / "histories"


def _replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=DATA_CONVERTER)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())  # noqa: ASYNC240 (a small local file)
    await _replayer().replay_workflow(history)


def test_histories_are_saved() -> None:
    names = {p.stem for p in HISTORIES.glob("*.json")}
    assert {
        "mortgage-closed-won",
        "mortgage-declined-resent-won",
        "checking-opened",
        "referral-converted",
        "referral-rejected-reassigned-closed",
    } <= names


async def test_fresh_journeys_replay(api: Api, client: Client) -> None:
    journeys = {
        "mortgage-closed-won": await mortgage_to_closed_won(api),
        "mortgage-declined-resent-won": await mortgage_to_closed_won(api, decline_first=True),
        "checking-opened": await checking_to_opened(api),
        "referral-converted": await referral_converted(api),
        "referral-rejected-reassigned-closed": await referral_rejected_reassigned_closed(api),
    }
    for name, opp in journeys.items():
        handle = client.get_workflow_handle(opp["workflow_id"])
        await handle.result()
        history = await handle.fetch_history()
        await _replayer().replay_workflow(history)
        if os.environ.get("NEEDFLOW_RECORD_HISTORIES"):
            (HISTORIES / f"{name}.json").write_text(history.to_json())
