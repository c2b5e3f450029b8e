"""Client-side starts of workflows: update-with-start, so the caller hears back once the
workflow has recorded what it was started with. Shared by the API and by activities that
open one workflow from another (a converted referral opens its opportunity).

The update of each start has a fixed id (`OPENED_UPDATE_ID`, `CREATED_UPDATE_ID`), one
per workflow, so a repeated start (a retried request or activity) attaches to the first
one's update instead of sending another: a create whose wait was cut short (the API's
deadline, api/workflows.py) answers with the created resource when it is repeated,
without a second workflow (the workflow id is the resource's) or a second update.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from domain.ids import opportunity_workflow_id, referral_workflow_id
from domain.opportunity import OpportunityAnswer, OpportunityInput
from domain.referral import ReferralAnswer, ReferralInput
from workflows import (
    SA_CUSTOMER_ID,
    SA_EXPRESSED_INTEREST,
    SA_OPPORTUNITY_STATUS,
    SA_OWNER_ID,
    SA_PRODUCT,
    SA_REFERRAL_STATUS,
    SA_STAGE,
    opportunity,
    referral,
)

#: The update id of an opportunity's `opened` and a referral's `created` (see above).
OPENED_UPDATE_ID = "opened"
CREATED_UPDATE_ID = "created"


@dataclass(frozen=True)
class Starts:
    """Opens needflow's workflows on one task queue.

    `search_attributes=False` is for a Temporal server that cannot register needflow's
    search attributes (the time-skipping test server): workflows then start without them
    and are told, in their input, never to upsert them (`workflows.common.Console`).
    """

    client: Client
    task_queue: str
    search_attributes: bool = True

    def _attributes(self, pairs: list[SearchAttributePair]) -> TypedSearchAttributes:
        return TypedSearchAttributes(pairs if self.search_attributes else [])

    async def open_opportunity(self, wf_input: OpportunityInput) -> None:
        """Start the opportunity's workflow (or find it started) and wait until it is recorded.

        The workflow id is the opportunity id, so a repeat — a retried request or activity —
        lands on the same workflow instead of opening a second opportunity.
        """
        wf_input = wf_input.model_copy(
            update={"search_attributes": self.search_attributes, "history_format": opportunity.HISTORY_FORMAT}
        )
        process = wf_input.process
        imported = wf_input.imported
        stage = imported.checkpoints[-1].stage if imported else process.stages[0].key
        start = WithStartWorkflowOperation(
            opportunity.OpportunityWorkflow.run,
            wf_input,
            id=opportunity_workflow_id(wf_input.opportunity_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A closed opportunity's id is never started again: a repeat finds it closed.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=self._attributes(
                [
                    SearchAttributePair(SA_PRODUCT, wf_input.product.value),
                    SearchAttributePair(SA_STAGE, stage),
                    SearchAttributePair(SA_OWNER_ID, wf_input.owner_id),
                    SearchAttributePair(SA_CUSTOMER_ID, wf_input.customer_id),
                    SearchAttributePair(SA_OPPORTUNITY_STATUS, "open"),
                ]
            ),
            static_summary=f"{process.name} opportunity {wf_input.opportunity_id} for customer {wf_input.customer_id}"
            + (f" (referral {wf_input.referral_id})" if wf_input.referral_id else "")
            # The source only: an old CRM's own id may be an e-mail or an account number.
            + (f" (imported from {imported.source})" if imported else ""),
            static_details=f"Owner `{wf_input.owner_id}` · {process.name} process v{process.version}",
        )
        try:
            await self.client.execute_update_with_start_workflow(
                opportunity.OpportunityWorkflow.opened,
                start_workflow_operation=start,
                id=OPENED_UPDATE_ID,
                result_type=OpportunityAnswer,
            )
        except WorkflowAlreadyStartedError:  # a repeat after the opportunity's workflow has finished
            await _settle(start)
        except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCError):  # e.g. the caller's deadline
            await _settle(start)
            raise

    async def open_referral(self, wf_input: ReferralInput) -> ReferralAnswer | None:
        """Start the referral's workflow (or find it started) and wait until it is recorded,
        scored, routed and the recipient told. The workflow id is the referral id, so a
        repeated create lands on the same referral; None when that referral has already
        closed (its id is never started again: the store holds how it ended)."""
        ref = wf_input.model_copy(
            update={"search_attributes": self.search_attributes, "history_format": referral.HISTORY_FORMAT}
        )
        start = WithStartWorkflowOperation(
            referral.ReferralWorkflow.run,
            ref,
            id=referral_workflow_id(ref.referral_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=self._attributes(
                [
                    SearchAttributePair(SA_REFERRAL_STATUS, "routing"),
                    SearchAttributePair(SA_EXPRESSED_INTEREST, ref.expressed_interest.value),
                ]
            ),
            static_summary=f"Referral {ref.referral_id}: {ref.expressed_interest.value} "
            f"from {ref.referrer.type} {ref.referrer.id}",
            static_details=f"Routing rules v{ref.rules.version} · acceptance SLA {ref.sla.accept_seconds:g} s · "
            f"follow-up SLA {ref.sla.followup_seconds:g} s",
        )
        try:
            return await self.client.execute_update_with_start_workflow(
                referral.ReferralWorkflow.created,
                start_workflow_operation=start,
                id=CREATED_UPDATE_ID,
                result_type=ReferralAnswer,
            )
        except WorkflowAlreadyStartedError:
            await _settle(start)
            return None
        except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCError):  # e.g. the caller's deadline
            await _settle(start)
            raise


async def _settle(start: WithStartWorkflowOperation) -> None:
    """Retrieve the start's own outcome after a refused or interrupted update-with-start
    (the SDK has set it, to the same error, or to the cancellation of a wait cut short),
    so it is not reported as never retrieved. Nothing here waits: it is already set."""
    with contextlib.suppress(WorkflowAlreadyStartedError, RPCError, asyncio.CancelledError):
        await start.workflow_handle()
