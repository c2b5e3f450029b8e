"""What every needflow workflow does the same way: activity options, and how a refused
command leaves a validator (an ApplicationError the API answers with 409)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from domain.opportunity import TransitionRefused

ACTIVITY_TIMEOUT = timedelta(seconds=30)
#: Activities are idempotent, so they retry until they succeed; the wait tops out at 30 s.
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30))

#: The ApplicationError type a refused command carries to the client (the API's 409).
INVALID_TRANSITION = "InvalidTransition"


def refuse(exc: TransitionRefused) -> ApplicationError:
    return ApplicationError(exc.message, exc.details, type=INVALID_TRANSITION, non_retryable=True)
