"""What every needflow workflow does the same way, so both read as business decisions:

- `validate`: run a pure `check_*` rule in an update validator and turn its refusal into
  the contract's error (an ApplicationError the API answers with 409), so a refused
  command writes nothing to history;
- `record`: run a recording activity with the standard timeout and retry policy (the
  activities are idempotent, so they may retry until they succeed);
- `Console`: the search attributes and current details the Web UI shows;
- `takes_patch`: whether a run takes a patch's branch, by its history format (asking no
  marker) or, for a run older than the format, by the patch's markers.
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


def takes_patch(history_format: int, *patch_ids: str) -> bool:
    """Whether this run takes the branch of a patch asked once, early in the run
    (`patch_ids`: its ids, newest first, if it was renamed). A run whose input holds
    history format 1 or later (docs/deployment.md, "A run's history format") takes it
    without recording a marker; an older run (format 0) asks the patch as it always did.
    Only for a patch that every format-1 run takes."""
    if history_format >= 1:
        any(_replay_older_workers_marker(p) for p in patch_ids)
        return True
    return any(workflow.patched(p) for p in patch_ids)


def _replay_older_workers_marker(patch_id: str) -> bool:
    """For a run whose input says it takes `patch_id`'s branch (its `history_format`), so
    that asking would only record a marker: while replaying, ask anyway, so a marker that
    a worker older than the format recorded is matched.

    During a rolling deploy such a worker can run a new run's first workflow task: it
    ignores the input field it does not know and asks the patch, which records a marker
    (and takes the same branch, since a new run gets True). A later worker's replay must
    then ask for that marker, or the SDK fails the replay for good ("Non-deprecated
    patch marker encountered"). Asked while replaying, `patched` records nothing: it
    answers whether the history holds the marker and, if it does, matches it. Asked live,
    it would record one; so it is not asked then, and a run started and run by current
    workers has none. Returns whether it matched a marker (never, live).

    Only a worker that already asks `patch_id` records it: the release before a format
    must ask the ids the format stands for (the opportunity's two lean ids: stop 12 asked
    the first, stop 14 the second).
    """
    return workflow.unsafe.is_replaying() and workflow.patched(patch_id)


async def record(activity: str, arg: object, result_type: type | None = None) -> Any:
    """Run a recording activity by name with the standard timeout and retry policy.

    A regular activity, not a local one, although a local activity would save three
    history events and a workflow task per write (bench/README.md): a local activity
    writes the store inside the workflow task that accepts the update, before that
    acceptance is durable. The fault tests (tests/faults/) restarted the Temporal server
    at that moment: the update was gone while its checkpoint was in the store, and a
    later command would have numbered its own checkpoint the same. A regular activity is
    only scheduled once the acceptance is in history, so the store never runs ahead."""
    return await workflow.execute_activity(
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
        #: Upsert only the attributes whose value changes. Each upsert is a history event
        #: (and server work); the start sets them all and most commands change one or
        #: none. A workflow turns this on behind its own patch: older runs upserted all.
        self.changes_only = False
        #: What the workflow showed last, for `refresh`.
        self._last: tuple[list[SearchAttributeUpdate], str] | None = None
        #: A hook that may add to what is shown (workflows/attention.py: `NeedsAttention`).
        self.decorate: Callable[[list[SearchAttributeUpdate], str], str] | None = None

    def publish(self, attributes: Sequence[SearchAttributeUpdate], details: str) -> None:
        self._last = (list(attributes), details)
        attributes = list(attributes)
        if self.decorate is not None:
            details = self.decorate(attributes, details)
        if self.search_attributes:
            if self.changes_only:
                current = workflow.info().typed_search_attributes
                attributes = [a for a in attributes if current.get(a.key) != a.value]
            if attributes:
                workflow.upsert_search_attributes(attributes)
        workflow.set_current_details(details)

    def refresh(self) -> None:
        """Show again what was shown last, with what `decorate` adds now."""
        if self._last is not None:
            self.publish(*self._last)
