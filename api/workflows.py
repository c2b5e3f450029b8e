"""How the API speaks to workflows: Updates, and Temporal's errors as API errors.

A validator's refusal comes back as an ApplicationError of type InvalidTransition and
answers 409 `invalid_transition`, with the workflow's own message; nothing was written.

Every update the API waits on (commands, events, and the update-with-start of a create)
has a deadline, NEEDFLOW_UPDATE_DEADLINE: a workflow that cannot answer (no worker
running, an activity retrying, an update waiting on a repair) gets a 503 `timeout` with
`Retry-After` and the resource's id, not a request that hangs until the client or a
proxy gives up without knowing what happened. The wait is bounded here, around the whole
call, because Temporal bounds no more than one RPC: `rpc_timeout` is per call, and the
SDK repeats, without end, a call the server answered "not yet" (its own long poll ended
first: a 40 s rpc_timeout never fires). Cancelling the wait is safe and documented (the SDK turns it into
WorkflowUpdateRPCTimeoutOrCancelledError, "this doesn't mean the update itself was timed
out or cancelled"): the update stays admitted at the workflow and is taken when it can
be. The same request repeated carries the same update id (the Idempotency-Key's, the
event's, a create's fixed one: domain/ids.py, workflows/starts.py), so Temporal attaches
it to that update and it answers with its outcome; api/idempotency.py stores no 5xx, so
the repeat asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services
from api.errors import ApiError, invalid_transition
from domain.ids import opportunity_workflow_id
from workflows.common import INVALID_TRANSITION

T = TypeVar("T")


class NotAnswered(ApiError):
    """503 `timeout`: the workflow did not answer within the deadline. Not an answer to
    keep (api/idempotency.py releases the key on a 5xx): the command may still take
    effect, and the same request repeated gets its outcome."""

    def __init__(self, workflow_id: str, about: dict[str, str], deadline: float, retry_after: int) -> None:
        super().__init__(
            503,
            "timeout",
            f"workflow {workflow_id} has not answered within {deadline:g} s; the command may still take effect: "
            f"repeat the same request (same Idempotency-Key or event id) in {retry_after} s for its outcome",
            {**about, "workflow_id": workflow_id, "retry_after_seconds": retry_after},
        )
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        response = super().response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


async def answered(svc: Services, waiting: Awaitable[T], *, workflow_id: str, about: dict[str, str]) -> T:
    """`await waiting` (an update, or an update-with-start) within NEEDFLOW_UPDATE_DEADLINE,
    else 503 `timeout` naming `about` (`id`: the resource or event) and the workflow."""
    deadline = svc.settings.update_deadline
    try:
        async with asyncio.timeout(deadline) as timer:
            return await waiting
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        task = asyncio.current_task()
        if not timer.expired() and task is not None and task.cancelling():
            # The request itself was cancelled (its client went away), which the SDK
            # reports as the same error: stay cancelled.
            raise asyncio.CancelledError from exc
        raise NotAnswered(workflow_id, about, deadline, svc.settings.update_retry_after) from exc


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
    about: dict[str, str] | None = None,
) -> Any:
    """The update's result within the deadline (`answered`); a refusal as 409. `about`
    names the resource in a 503 (`{"id": ...}`)."""
    handle = svc.client.get_workflow_handle(wf_id)
    try:
        return await answered(
            svc,
            handle.execute_update(update, arg, id=update_id, result_type=result_type),
            workflow_id=wf_id,
            about=about or {},
        )
    except (WorkflowUpdateFailedError, RPCError) as exc:
        mapped = _as_api_error(exc, closed_message)
        if mapped is None:
            raise
        raise mapped from exc


async def update_opportunity(
    svc: Services,
    opportunity_id: str,
    update: Any,
    arg: Any,
    *,
    update_id: str | None,
    result_type: type,
    about: dict[str, str] | None = None,
) -> Any:
    return await run_update(
        svc,
        opportunity_workflow_id(opportunity_id),
        update,
        arg,
        update_id=update_id,
        result_type=result_type,
        closed_message="this opportunity is closed; nothing more can happen to it",
        about=about or {"id": opportunity_id},
    )
