"""A durable timer a workflow re-arms when its state changes (Temporal samples'
`updatable_timer` pattern), for SLAs: wait until a deadline, unless something happens
first that may move or cancel the deadline."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

#: A deadline already past still waits this long: a timer of zero is not a timer.
_MIN_WAIT = timedelta(milliseconds=1)


class RearmableTimer:
    """`await timer.wait(deadline)` returns True when the deadline passed with nothing
    changed, False as soon as `rearm()` is called (the caller recomputes its deadline and
    waits again). A deadline of None waits for a change only.

    One Temporal timer per wait; a re-armed wait cancels its timer. Everything is decided
    on workflow time, so replay takes the same path.
    """

    def __init__(self) -> None:
        self._version = 0

    def rearm(self) -> None:
        """The state the deadline depends on changed: wake the waiter to recompute it."""
        self._version += 1

    async def wait(self, deadline: datetime | None) -> bool:
        seen = self._version
        timeout = None if deadline is None else max(deadline - workflow.now(), _MIN_WAIT)
        try:
            await workflow.wait_condition(lambda: self._version != seen, timeout=timeout)
        except TimeoutError:
            return self._version == seen
        return False
