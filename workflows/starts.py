"""Client-side starts of workflows, shared by the API and by activities that open one
workflow from another (a converted referral opens its opportunity)."""

from __future__ import annotations

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from domain.opportunity import OpportunityInput, OpportunityState
from workflows import SA_CUSTOMER_ID, SA_OPPORTUNITY_STATUS, SA_OWNER_ID, SA_PRODUCT, SA_STAGE
from workflows.opportunity import OpportunityWorkflow, workflow_id


async def open_opportunity(client: Client, task_queue: str, wf_input: OpportunityInput) -> None:
    """Start the opportunity's workflow (or find it started) and wait until it is recorded.

    The workflow id is the opportunity id, so a repeat — a retried request or activity —
    lands on the same workflow instead of opening a second opportunity.
    """
    process = wf_input.process
    start = WithStartWorkflowOperation(
        OpportunityWorkflow.run,
        wf_input,
        id=workflow_id(wf_input.opportunity_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(SA_PRODUCT, wf_input.product.value),
                SearchAttributePair(SA_STAGE, process.stages[0].key),
                SearchAttributePair(SA_OWNER_ID, wf_input.owner_id),
                SearchAttributePair(SA_CUSTOMER_ID, wf_input.customer_id),
                SearchAttributePair(SA_OPPORTUNITY_STATUS, "open"),
            ]
        ),
        static_summary=f"{process.name} opportunity {wf_input.opportunity_id} for customer {wf_input.customer_id}"
        + (f" (referral {wf_input.referral_id})" if wf_input.referral_id else ""),
        static_details=f"Owner `{wf_input.owner_id}` · {process.name} process v{process.version}",
    )
    try:
        await client.execute_update_with_start_workflow(
            OpportunityWorkflow.opened, start_workflow_operation=start, result_type=OpportunityState
        )
    except WorkflowAlreadyStartedError:
        pass  # a repeat after the opportunity's workflow has already finished
