"""The workflows' own guards, reached straight through the Temporal client as any client
could (a second API version, an operator's script), not only through the HTTP API whose
store checks and update ids usually stop a repeat first."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from temporalio.client import Client

from domain.ids import referral_workflow_id
from domain.opportunity import EventCommand, EventResult
from domain.types import EventType
from tests.helpers import Api, within
from tests.journeys import mortgage_to_closed_won, referral_converted
from workflows.client import CODEC
from workflows.opportunity import OpportunityWorkflow


async def test_the_same_event_under_another_update_id_is_a_duplicate_and_enters_once(api: Api, client: Client) -> None:
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    handle = client.get_workflow_handle(opp["workflow_id"])
    cmd = EventCommand(
        event_id=f"evt-{uuid.uuid4().hex}",
        type=EventType.mortgage_application_submitted,
        occurred_at=datetime(2026, 11, 25, 10, tzinfo=UTC),
        data={"application_id": "APP-1"},
        source="mortgage-system",
    )

    async def send(update_id: str) -> EventResult:
        return await within(
            handle.execute_update(OpportunityWorkflow.apply_event, cmd, id=update_id, result_type=EventResult),
            "apply_event",
        )

    first = await send("first-delivery")
    again = await send("second-delivery")  # another update id: Temporal cannot de-duplicate it
    assert (first.result, again.result) == ("applied", "duplicate")
    assert (again.opportunity.stage, again.opportunity.checkpoints) == ("applied", 3)
    stored = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in stored["checkpoints"]] == ["interested", "searching", "applied"]


async def test_update_results_in_history_carry_ids_and_status_not_the_state(api: Api, client: Client) -> None:
    """Every update's result stays in history (a copy per update): a mortgage won by
    signature and a converted referral keep in theirs which record and where it stands,
    never the checkpoints, evidence or the referral's history and scores."""
    won = await mortgage_to_closed_won(api)
    referral = await referral_converted(api)
    results = []
    for wf_id in (won["workflow_id"], referral_workflow_id(referral["id"])):
        handle = client.get_workflow_handle(wf_id)
        await within(handle.result(), f"{wf_id} to finish")
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_execution_update_completed_event_attributes"):
                outcome = event.workflow_execution_update_completed_event_attributes.outcome
                (payload,) = await CODEC.decode(list(outcome.success.payloads))
                results.append(json.loads(payload.data))
    opportunity_keys = {"opportunity_id", "stage", "status", "checkpoints"}
    referral_keys = {"referral_id", "status", "assignee_id", "opportunity_id"}
    assert len(results) >= 8
    for result in results:
        inner = result.get("opportunity", result) if "result" in result else result
        assert set(inner) in (opportunity_keys, referral_keys), result
        assert len(json.dumps(result)) < 200, result
