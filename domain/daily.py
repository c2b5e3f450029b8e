"""The daily review's records: what `workflows.daily.DailyReviewWorkflow` asks its
activities (`activities.daily`) to do, and the activity names it asks by. Pure: the
workflow imports this, never the store.

A review covers a window of time `[since, until)`; `day` (the UTC date of `until`) names
its e-mails, so one manager gets at most one practice-audit e-mail per day however often
the review runs or retries.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel

MAIL_NEW_EXCEPTIONS = "daily.mail_new_exceptions"
REBUILD_LEAD_MODEL = "daily.rebuild_lead_model"
REFRESH_AUDIT_FINDINGS = "daily.refresh_audit_findings"
PURGE_EXPIRED = "daily.purge_expired"


class DailyReviewInput(BaseModel):
    """What the schedule starts the review with (nothing: every field has a default).

    `until`: the end of the window; None: the run's scheduled time (the schedule's
    `TemporalScheduledStartTime`), else when the workflow started. `window_hours`: how far
    back the window reaches. `manager_ids`: only these managers' teams (None: every
    manager), for a review of one team by hand."""

    until: datetime | None = None
    window_hours: int = 24
    manager_ids: list[str] | None = None


class NewExceptionsRequest(BaseModel):
    since: datetime
    until: datetime
    day: date
    manager_ids: list[str] | None = None


class NewExceptionsMailed(BaseModel):
    #: Managers who were e-mailed (or whose e-mail of this day already existed).
    managers: int
    #: New exceptions listed in those e-mails.
    exceptions: int


class LeadModelRebuilt(BaseModel):
    #: Decided referrals the model was rebuilt from.
    decided: int
    won: int
    lost: int
    #: Tally rows (feature, value, and the total) that differed from the rebuilt ones and
    #: were corrected, added or removed: 0 when nothing had drifted.
    repaired: int


class AuditFindingsRefreshed(BaseModel):
    #: Opportunities left stale (store/audit_findings.py) and judged now: 0 when every
    #: write had judged its own.
    judged: int


class ExpiredPurged(BaseModel):
    #: Rows deleted past their retention (store/upkeep.py).
    idempotency_records: int
    event_claims: int


class DailyReviewResult(BaseModel):
    since: datetime
    until: datetime
    audit: NewExceptionsMailed
    lead_model: LeadModelRebuilt
    #: None for a review run before the workflow did these steps.
    audit_findings: AuditFindingsRefreshed | None = None
    purged: ExpiredPurged | None = None
