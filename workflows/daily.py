"""The daily review (`needflow-daily-review`, started by the Temporal Schedule of
`workflows/schedules.py`): deterministic, every piece of I/O in `activities/daily.py`.

1. The practice audit over the window `[since, until)` (the 24 hours before the run's
   scheduled time, unless the input says otherwise): each active manager is e-mailed the
   NEW exceptions of their team (employees whose `manager_id` is them), at most one e-mail
   per manager and day; managers with nothing new get none. "New" is defined, once, in
   `activities/daily.py`.
2. The lead model's tallies (`lead_feature_counts`) are rebuilt from the decided referrals,
   repairing any drift. Referrer scores need no rebuild: they are not stored, every read
   computes them from the referrals (`store.queries.referrer_scores`).
3. Upkeep: the practice audit's kept verdicts catch up (opportunities left stale by a
   migration, bulk SQL or a changed rule are judged, in batches, with a heartbeat;
   store/audit_findings.py), and records past their retention are purged (idempotency
   keys, event claims; store/upkeep.py). Added under `workflow.patched(UPKEEP)`: a review
   recorded before it (tests/histories/daily-review.json) replays without the steps.

Every activity is idempotent, so a retried activity or a re-run of the same day sends
nothing twice and counts nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from domain.daily import (
        MAIL_NEW_EXCEPTIONS,
        PURGE_EXPIRED,
        REBUILD_LEAD_MODEL,
        REFRESH_AUDIT_FINDINGS,
        AuditFindingsRefreshed,
        DailyReviewInput,
        DailyReviewResult,
        ExpiredPurged,
        LeadModelRebuilt,
        NewExceptionsMailed,
        NewExceptionsRequest,
    )
    from workflows.common import record

#: The patch that added step 3 (module docstring).
UPKEEP = "daily-upkeep"
#: Catching up after migration 0009 judges a bank's every opportunity: minutes, not seconds;
#: the activity heartbeats after every batch, so a dead worker is noticed within a minute.
REFRESH_TIMEOUT = timedelta(hours=2)
REFRESH_HEARTBEAT = timedelta(minutes=1)

#: Set by the server on every workflow a schedule starts: the time it was scheduled for.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def _scheduled_time() -> datetime:
    """The run's scheduled time when a schedule started it (a late start, after an outage,
    still reviews its own day), else when the workflow started."""
    scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
    return scheduled if scheduled is not None else workflow.info().start_time


@workflow.defn
class DailyReviewWorkflow:
    @workflow.run
    async def run(self, input: DailyReviewInput) -> DailyReviewResult:
        until = (input.until or _scheduled_time()).astimezone(UTC)
        since = until - timedelta(hours=input.window_hours)
        workflow.set_current_details(f"Reviewing {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC")
        audit: NewExceptionsMailed = await record(
            MAIL_NEW_EXCEPTIONS,
            NewExceptionsRequest(since=since, until=until, day=until.date(), manager_ids=input.manager_ids),
            NewExceptionsMailed,
        )
        lead_model: LeadModelRebuilt = await record(REBUILD_LEAD_MODEL, None, LeadModelRebuilt)
        findings: AuditFindingsRefreshed | None = None
        purged: ExpiredPurged | None = None
        if workflow.patched(UPKEEP):
            findings = await workflow.execute_activity(
                REFRESH_AUDIT_FINDINGS,
                result_type=AuditFindingsRefreshed,
                start_to_close_timeout=REFRESH_TIMEOUT,
                heartbeat_timeout=REFRESH_HEARTBEAT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
            purged = await record(PURGE_EXPIRED, until, ExpiredPurged)
        workflow.set_current_details(
            f"Reviewed {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC: {audit.exceptions} new exception(s) "
            f"e-mailed to {audit.managers} manager(s); lead model rebuilt from {lead_model.decided} decided "
            f"referral(s), {lead_model.repaired} tally row(s) repaired"
            + (f"; {findings.judged} stale opportunities judged by the practice audit" if findings else "")
        )
        return DailyReviewResult(
            since=since, until=until, audit=audit, lead_model=lead_model, audit_findings=findings, purged=purged
        )
