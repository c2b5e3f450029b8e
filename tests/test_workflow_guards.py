"""The workflows' own guards, reached straight through the Temporal client as any client
could (a second API version, an operator's script), not only through the HTTP API whose
store checks and update ids usually stop a repeat first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from temporalio.client import Client

from domain.opportunity import EventCommand, EventResult
from domain.types import EventType
from tests.helpers import Api, within
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
    assert [c.stage for c in again.state.checkpoints] == ["interested", "searching", "applied"]
    stored = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in stored["checkpoints"]] == ["interested", "searching", "applied"]
