"""What every needflow workflow does the same way, so both read as business decisions:

- `validate`: run a pure `check_*` rule in an update validator and turn its refusal into
  the contract's error (an ApplicationError the API answers with 409), so a refused
  command writes nothing to history;
- `record`: run a recording activity with the standard timeout and retry policy (the
  activities are idempotent, so they may retry until they succeed);
- `Console`: the search attributes and current details the Web UI shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain.opportunity import TransitionRefused

ACTIVITY_TIMEOUT = timedelta(seconds=30)
#: Activities are idempotent, so they retry until they succeed; the wait tops out at 30 s.
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30))

#: The patch under which the lifecycle workflows write a leaner history (issue 10): store
#: writes as local activities (`record_locally`), search attributes upserted only when
#: one changed (`Console`). Older histories replay without it, as they ran.
LEAN_HISTORY = "lean-history"

#: The ApplicationError type a refused command carries to the client (the API's 409).
INVALID_TRANSITION = "InvalidTransition"


def refuse(exc: TransitionRefused) -> ApplicationError:
    return ApplicationError(exc.message, exc.details, type=INVALID_TRANSITION, non_retryable=True)


def validate(check: Callable[..., object], *args: Any) -> None:
    """An update validator's body: `check(*args)` (a pure rule of `domain/`), its refusal
    raised as the contract's error. Validators return nothing: the handler runs the same
    check again and uses what it returns."""
    try:
        check(*args)
    except TransitionRefused as exc:
        raise refuse(exc) from None


async def record(activity: str, arg: object, result_type: type | None = None) -> Any:
    """Run a recording activity by name with the standard timeout and retry policy."""
    return await workflow.execute_activity(
        activity,
        arg,
        result_type=result_type,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
    )


async def record_locally(activity: str, arg: object, result_type: type | None = None) -> Any:
    """Run a recording activity as a local activity (under LEAN_HISTORY): the worker that runs the workflow
    runs it within the same workflow task, and history keeps one marker with its result,
    instead of an activity task's three events and a second workflow task (bench/README.md
    has the figures). For the lifecycle's store writes: short, idempotent, with nothing to
    heartbeat. Same timeout and retry policy as `record`: the SDK retries in the worker
    for a while, then across workflow tasks with timers, for as long as it takes."""
    return await workflow.execute_local_activity(
        activity,
        arg,
        result_type=result_type,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
    )


class Console:
    """Where the Web UI shows a workflow: its search attributes and current details.

    `search_attributes` comes from the workflow's input, set by whoever started it
    (`workflows.starts.Starts`): False only on a server that cannot register needflow's
    attributes (Temporal's time-skipping test server), where the workflow still shows its
    current details but upserts nothing, instead of failing its workflow task.
    """

    def __init__(self, search_attributes: bool) -> None:
        self.search_attributes = search_attributes
        #: What the workflow showed last, for `refresh`.
        self._last: tuple[list[SearchAttributeUpdate], str] | None = None
        #: The values last upserted, by attribute name.
        self._upserted: dict[str, object] | None = None
        #: A hook that may add to what is shown (workflows/attention.py: `NeedsAttention`).
        self.decorate: Callable[[list[SearchAttributeUpdate], str], str] | None = None

    def publish(self, attributes: Sequence[SearchAttributeUpdate], details: str) -> None:
        self._last = (list(attributes), details)
        attributes = list(attributes)
        if self.decorate is not None:
            details = self.decorate(attributes, details)
        if self.search_attributes and self._changes(attributes):
            workflow.upsert_search_attributes(attributes)
        workflow.set_current_details(details)

    def _changes(self, attributes: list[SearchAttributeUpdate]) -> bool:
        """Whether `attributes` change what was upserted last: an upsert is a command and an
        event, so a change that moves no attribute (a signature sent, say) upserts
        nothing (under LEAN_HISTORY; the details still change)."""
        values = {update.key.name: update.value for update in attributes}
        if self._upserted is None:  # what the start set (workflows/starts.py)
            started = workflow.info().typed_search_attributes
            self._upserted = {update.key.name: started.get(update.key) for update in attributes}
        if values == self._upserted and workflow.patched(LEAN_HISTORY):
            return False
        self._upserted = values
        return True

    def refresh(self) -> None:
        """Show again what was shown last, with what `decorate` adds now."""
        if self._last is not None:
            self.publish(*self._last)
