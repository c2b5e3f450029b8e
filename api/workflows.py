"""How the API speaks to workflows: Updates, and Temporal's errors as API errors.

A validator's refusal comes back as an ApplicationError of type InvalidTransition and
answers 409 `invalid_transition`, with the workflow's own message; nothing was written.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services
from api.errors import ApiError, invalid_transition
from domain.ids import opportunity_workflow_id
from workflows.common import INVALID_TRANSITION


def _as_api_error(exc: Exception, closed_message: str) -> ApiError | None:
    if isinstance(exc, WorkflowUpdateFailedError):
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == INVALID_TRANSITION:
            details = cause.details[0] if cause.details else {}
            return invalid_transition(cause.message, **(details if isinstance(details, dict) else {}))
        return ApiError(500, "internal_error", "the workflow failed to apply this command")
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        # The workflow has finished: nothing more can happen to it.
        return invalid_transition(closed_message)
    return None


async def run_update(
    svc: Services,
    wf_id: str,
    update: Any,
    arg: Any,
    *,
    update_id: str | None,
    result_type: type,
    closed_message: str,
) -> Any:
    handle = svc.client.get_workflow_handle(wf_id)
    try:
        return await handle.execute_update(update, arg, id=update_id, result_type=result_type)
    except (WorkflowUpdateFailedError, RPCError) as exc:
        mapped = _as_api_error(exc, closed_message)
        if mapped is None:
            raise
        raise mapped from exc


async def update_opportunity(
    svc: Services, opportunity_id: str, update: Any, arg: Any, *, update_id: str | None, result_type: type
) -> Any:
    return await run_update(
        svc,
        opportunity_workflow_id(opportunity_id),
        update,
        arg,
        update_id=update_id,
        result_type=result_type,
        closed_message="this opportunity is closed; nothing more can happen to it",
    )
