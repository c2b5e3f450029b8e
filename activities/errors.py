"""What retrying cannot fix, an activity says once: a non-retryable error.

Activities retry until they succeed (workflows/common.py `ACTIVITY_RETRY`): right for a
database that is restarting or a lock that is busy, wrong for a write the database refuses
on its merits — a constraint it breaks (IntegrityError), a value it cannot store
(DataError: PostgreSQL's NUL byte, a number out of range), a statement that no longer
fits the schema (ProgrammingError, after a bad deploy). Retried, those fail the same way
for ever while the workflow waits. So every activity runs inside `ActivityErrors`, which
turns them into an `ApplicationError(non_retryable=True)` whose type names the kind of
failure; the workflow then shows it and waits for a repair (workflows/attention.py).

The error carries the exception's class, SQLSTATE (or SQLite's error name) and the
constraint's name, never the database's message: PostgreSQL's DETAIL quotes the refused
values ("Key (email)=(…) already exists"), and this error goes to history, the Web UI
and the log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from domain.invariants import InvariantBroken

#: The database refusals no retry can change, by the ApplicationError type they become.
FOR_GOOD: dict[type[Exception], str] = {
    IntegrityError: "IntegrityError",
    DataError: "DataError",
    ProgrammingError: "ProgrammingError",
}


class Overtaken(Exception):
    """Another attempt of the same activity wrote first: one that timed out and ran on,
    racing its retry. Retryable on purpose: the next attempt reads what it wrote."""


def _code(exc: Exception) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)


def _constraint(exc: Exception) -> str | None:
    diag = getattr(getattr(exc, "orig", None), "diag", None)
    return getattr(diag, "constraint_name", None)


def for_good(exc: Exception) -> ApplicationError | None:
    """The non-retryable error `exc` stands for, or None when a retry may succeed."""
    if isinstance(exc, InvariantBroken):  # its message stays where raised: it may quote data
        return ApplicationError("a broken invariant", type="InvariantBroken", non_retryable=True)
    for cls, kind in FOR_GOOD.items():
        if isinstance(exc, cls):
            parts = [p for p in (_code(exc), _constraint(exc) and f"constraint {_constraint(exc)}") if p]
            said = f" ({', '.join(parts)})" if parts else ""
            return ApplicationError(f"the database refused the write: {kind}{said}", type=kind, non_retryable=True)
    return None


class _Inbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as exc:
            final = for_good(exc)
            if final is None:
                raise
            activity.logger.error("%s failed for good: %s", activity.info().activity_type, final.message)
            raise final from None  # not chained: the database's own message may quote the data


class ActivityErrors(Interceptor):
    """The worker's interceptor that applies `for_good` to every activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next)
