"""What ops see in the Temporal Web UI: opportunities findable by search attributes
(no personal data in them), a summary on the start, current details with the stage,
and a query answering the workflow's full state."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from domain.opportunity import OpportunityState
from tests.helpers import Api
from tests.journeys import mortgage_to_closed_won
from workflows import SA_CUSTOMER_ID, SA_OPPORTUNITY_STATUS, SA_OWNER_ID, SA_PRODUCT, SA_STAGE
from workflows.opportunity import OpportunityWorkflow


async def _ids(client: Client, query: str) -> set[str]:
    return {wf.id async for wf in client.list_workflows(query)}


async def test_search_attributes_follow_the_stage(api: Api, client: Client) -> None:
    opp = await api.opportunity()
    handle = client.get_workflow_handle(opp["workflow_id"])

    desc = await handle.describe()
    sa = desc.typed_search_attributes
    assert sa.get(SA_PRODUCT) == "mortgage" and sa.get(SA_STAGE) == "interested"
    assert sa.get(SA_OWNER_ID) == opp["owner_id"] and sa.get(SA_CUSTOMER_ID) == opp["customer_id"]
    assert sa.get(SA_OPPORTUNITY_STATUS) == "open"
    assert "Mortgage opportunity" in (await desc.static_summary() or "")
    # No personal data: neither the customer's name nor e-mail is searchable.
    assert all("Rachel" not in str(v) and "@" not in str(v) for v in desc.search_attributes.values())

    state = await handle.query(OpportunityWorkflow.current_state, result_type=OpportunityState)
    assert state.stage == "interested" and len(state.checkpoints) == 1

    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": opp["owner_id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SA_STAGE) == "searching"
    details = await handle.query("__temporal_workflow_metadata")
    assert "Searching" in details.current_details and "20 %" in details.current_details

    won = await mortgage_to_closed_won(api)
    await client.get_workflow_handle(won["workflow_id"]).result()
    # Visibility is eventually consistent: poll briefly for the listing.
    for _ in range(50):
        found = await _ids(client, 'Stage = "closed_won" AND OpportunityStatus = "won" AND Product = "mortgage"')
        if won["workflow_id"] in found:
            break
        await asyncio.sleep(0.1)
    assert won["workflow_id"] in found
    assert opp["workflow_id"] not in found
