"""What ops see in the Temporal Web UI: opportunities findable by search attributes
(no personal data in them), a summary on the start, current details with the stage,
and a query answering the workflow's full state."""

from __future__ import annotations

from temporalio.client import Client

from domain.opportunity import OpportunityState
from tests.helpers import Api, until_equal, within, workflow_ids
from tests.journeys import mortgage_to_closed_won
from workflows import SA_CUSTOMER_ID, SA_OPPORTUNITY_STATUS, SA_OWNER_ID, SA_PRODUCT, SA_STAGE
from workflows.opportunity import OpportunityWorkflow


async def test_search_attributes_follow_the_stage(api: Api, client: Client) -> None:
    opp = await api.opportunity()
    handle = client.get_workflow_handle(opp["workflow_id"])

    desc = await within(handle.describe(), "describe")
    sa = desc.typed_search_attributes
    assert sa.get(SA_PRODUCT) == "mortgage" and sa.get(SA_STAGE) == "interested"
    assert sa.get(SA_OWNER_ID) == opp["owner_id"] and sa.get(SA_CUSTOMER_ID) == opp["customer_id"]
    assert sa.get(SA_OPPORTUNITY_STATUS) == "open"
    assert await desc.static_summary() == f"Mortgage opportunity {opp['id']} for customer {opp['customer_id']}"
    # No personal data: neither the customer's name nor e-mail is searchable; only these ids and states.
    # Temporal's own: BuildIds, and TemporalChangeVersion (the patches this run took).
    custom = {k: v for k, v in desc.search_attributes.items() if k not in ("BuildIds", "TemporalChangeVersion")}
    assert custom == {
        "Product": ["mortgage"],
        "Stage": ["interested"],
        "OwnerId": [opp["owner_id"]],
        "CustomerId": [opp["customer_id"]],
        "OpportunityStatus": ["open"],
    }
    assert all("Rachel" not in str(v) and "@" not in str(v) for v in desc.search_attributes.values())

    state = await within(handle.query(OpportunityWorkflow.current_state, result_type=OpportunityState), "query")
    assert state.stage == "interested" and len(state.checkpoints) == 1

    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": opp["owner_id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    desc = await within(handle.describe(), "describe")
    assert desc.typed_search_attributes.get(SA_STAGE) == "searching"
    details = await within(handle.query("__temporal_workflow_metadata"), "metadata")
    assert details.current_details == (
        f"**Searching** (20 %) · status **open**\n\nMortgage process v1 · owner `{opp['owner_id']}` · 2 checkpoint(s)"
    )

    won = await mortgage_to_closed_won(api)
    await within(client.get_workflow_handle(won["workflow_id"]).result(), "the won workflow to finish")
    # Visibility is eventually consistent: wait until the search finds exactly the won one of
    # these two customers' opportunities (and keeps the open one out).
    customers = f'CustomerId IN ("{opp["customer_id"]}", "{won["customer_id"]}")'
    query = f'Stage = "closed_won" AND OpportunityStatus = "won" AND Product = "mortgage" AND {customers}'

    await until_equal(lambda: workflow_ids(client, query), [won["workflow_id"]], "the won mortgage in visibility")

    # The open one is found under its own stage.
    await until_equal(
        lambda: workflow_ids(client, f'Stage = "searching" AND {customers}'),
        [opp["workflow_id"]],
        "the searching mortgage in visibility",
    )
