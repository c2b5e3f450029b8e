"""When an activity fails for good, the workflow shows it and waits for a repair.

An activity fails for good when retrying cannot help (activities/errors.py: the database
refuses the data, an invariant is broken). Left alone, that failure would fail the
command that ran it while the workflow's state had already moved on: the record and the
workflow would part ways. Instead, `Attention.record` (the workflows' way to run a
recording activity):

- shows it in the Web UI: `NeedsAttention = true` and a first line in the current details
  naming the activity and the kind of failure (never its message, which may quote data);
- waits, the command with it, until ops repair the cause (a fix deployed, a record
  corrected) and ask for a retry: the `retry_failed` update, `starter.py attention retry
  WORKFLOW_ID`;
- then runs the same activity with the same input again (activities are idempotent), and
  goes on as if it had succeeded the first time; `NeedsAttention` goes back to false once
  nothing is blocked.

Meanwhile the caller's request times out into a 503 with Retry-After (api/workflows.py),
and the same request repeated after the repair gets the command's outcome.

Histories from before this module failed the command instead; `workflow.patched` keeps them
replaying as they ran (docs/deployment.md, "Changing workflow code").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

with workflow.unsafe.imports_passed_through():
    from workflows import SA_NEEDS_ATTENTION
    from workflows.common import Console, record

#: The patch that turned "fail the command" into "wait for a repair".
PATCH = "needs-attention"
#: The update ops send to retry what failed for good.
RETRY_FAILED = "retry_failed"


@dataclass
class Retried:
    """`retry_failed`'s answer: how many blocked activities ran again, and how many of
    them (or others) are blocked now."""

    retried: int
    still_blocked: int


def failed_for_good(exc: Exception) -> bool:
    """Whether a recording activity's failure is for good. A regular activity's comes as
    an ActivityError around its cause; a local activity's as the cause itself."""
    if isinstance(exc, ActivityError):
        return exc.retry_state == RetryState.NON_RETRYABLE_FAILURE or failed_for_good(exc.cause)
    return isinstance(exc, ApplicationError) and exc.non_retryable


def _kind(exc: Exception) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    return (cause.type if isinstance(cause, ApplicationError) else None) or type(cause).__name__


class Attention:
    """The activities of one workflow that failed for good, waiting for ops."""

    def __init__(self, console: Console) -> None:
        self._console = console
        console.decorate = self.decorate
        self._blocked: dict[int, str] = {}  # token → "activity: kind", in order of failure
        self._tokens = 0
        self._round = 0
        self._rerun: set[int] = set()  # tokens whose activity ran again after a retry
        self._shown = False  # the attribute is upserted from the first failure on

    @property
    def blocked(self) -> list[str]:
        return list(self._blocked.values())

    async def record(self, activity: str, arg: object, result_type: type | None = None) -> Any:
        """Run a recording activity (workflows/common.py `record`); when it fails for good,
        show it and run it again once ops ask, until it succeeds."""
        previous: int | None = None  # the token of the failure this attempt retries
        try:
            while True:
                try:
                    return await record(activity, arg, result_type)
                except (ActivityError, ApplicationError) as exc:
                    if not failed_for_good(exc) or not workflow.patched(PATCH):
                        raise
                    token = self._block(f"{activity}: {_kind(exc)}")
                    if previous is not None:
                        self._rerun.add(previous)
                    previous = token
                    round_now = self._round
                    await workflow.wait_condition(lambda r=round_now: self._round > r)
                    del self._blocked[token]
        finally:
            if previous is not None:  # the last retry's attempt is over, whichever way
                self._rerun.add(previous)

    def _block(self, what: str) -> int:
        self._tokens += 1
        self._blocked[self._tokens] = what
        workflow.logger.warning("needs attention: %s", what)
        self._show()
        return self._tokens

    def _show(self) -> None:
        self._shown = True
        self._console.refresh()

    def decorate(self, attributes: list[SearchAttributeUpdate], details: str) -> str:
        """The console's hook: add the attribute (once ever shown) and the details line."""
        if self._shown:
            attributes.append(SA_NEEDS_ATTENTION.value_set(bool(self._blocked)))
        if not self._blocked:
            return details
        lines = "\n".join(f"- `{what}`" for what in self._blocked.values())
        return (
            "**⚠ needs attention**: failed for good, waiting for a repair and "
            f"`starter.py attention retry {workflow.info().workflow_id}`:\n{lines}\n\n{details}"
        )

    def validate_retry(self) -> None:
        if not self._blocked:
            raise ApplicationError("nothing of this workflow is waiting for a retry", type="NothingToRetry")

    async def retry(self) -> Retried:
        """Run every blocked activity again; answer once each has succeeded or failed again."""
        waiting = set(self._blocked)
        self._round += 1
        await workflow.wait_condition(lambda: waiting <= self._rerun)
        self._rerun -= waiting
        self._show()
        return Retried(retried=len(waiting), still_blocked=len(self._blocked))


class Repairable:
    """The `retry_failed` update, for a workflow that records through `self.attention`.

    The validator refuses a retry when nothing is blocked (the caller's 409), so a stray
    retry writes nothing to history."""

    attention: Attention

    @workflow.update(name=RETRY_FAILED)
    async def retry_failed(self) -> Retried:
        return await self.attention.retry()

    @retry_failed.validator
    def _validate_retry_failed(self) -> None:
        self.attention.validate_retry()
