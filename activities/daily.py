"""The daily review's activities (`workflows/daily.py`), idempotent under retry.

New exceptions
--------------
An exception is an (opportunity, rule) pair the practice audit reports (`store/audit.py`).
A review covers the window `[since, until)`. An exception is NEW in that window when the
opportunity breaks the rule judged on its record as it stood at `until` and did not break
it judged on its record as it stood at `since` — "as it stood at t" meaning only what had
happened before t by the record's own times: the opportunity opened before t (else it
breaks nothing), its checkpoints entered, its close, its need recorded, its customer's
consents granted (and withdrawn) and prequalifications decided before t (`as_of`). So
each exception is new in exactly one daily window — the day the event that broke the
rule happened — and a re-run of the same window finds the same ones; no table remembers
what was mailed. Only opportunities opened, closed or with a checkpoint entered within
the window can have new exceptions (nothing else moves the rules' verdicts for an
opportunity opened before `since`), so only those are loaded.

Consequences, on purpose: records brought in by an import keep their own (old) times, so
their exceptions belong to the days they happened and are never "new" in a daily e-mail
(the practice audit report lists them); an opportunity handed to another team brings no
new exceptions with it.

Each active manager with an e-mail address gets one e-mail listing the new exceptions of
their team (the opportunities owned by employees whose `manager_id` is them), under the
message id `practice-audit:<day>:<manager id>` (`day`: the UTC date of `until`): a
retried activity or a second run of the same day finds the outbox row and sends nothing
more. A manager whose team has nothing new gets nothing.

The lead model
--------------
`rebuild_lead_model` recomputes every `lead_feature_counts` row from the decided
referrals (`decided_at` set; `converted` won, any other status lost: exactly what
`activities.referral.learn` counted when each was decided) that carry every feature of
the model (a referral written without them, by an import or by hand, is left out: the
model needs each feature's tallies to add up to its totals), in one transaction, and
writes only the rows that differ. It first locks the total row, as `learn` does, so on
PostgreSQL a decision recorded meanwhile waits and then adds itself to the rebuilt tallies.
A worker's cached lead model (`ReferralActivities._lead_model`) is keyed by the totals: a
repair that leaves the totals as they were reaches it with the next decision.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime

from sqlalchemy import and_, case, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.mail import Mailer
from activities.referral import TOTAL
from domain.daily import (
    MAIL_NEW_EXCEPTIONS,
    PURGE_EXPIRED,
    REBUILD_LEAD_MODEL,
    REFRESH_AUDIT_FINDINGS,
    AuditFindingsRefreshed,
    ExpiredPurged,
    LeadModelRebuilt,
    NewExceptionsMailed,
    NewExceptionsRequest,
)
from domain.opportunity import closed_at_of
from domain.process import ProcessCatalog
from domain.scoring import FEATURES, LeadModel
from store import upkeep
from store.audit import Finding, OpportunityFacts, findings, load_facts, when
from store.audit_findings import refresh_stale
from store.models import Checkpoint, Employee, LeadFeatureCount, Opportunity, Referral


def as_of(opp: OpportunityFacts, t: datetime) -> OpportunityFacts | None:
    """The opportunity as its record stood at `t`: only what happened before `t`; None
    when it was not opened yet."""
    if opp.opened_at >= t:
        return None
    status, closed_at = opp.status, opp.closed_at
    if status != "open" and closed_at_of(opp.id, status, closed_at) >= t:
        status, closed_at = "open", None
    need_known = opp.need_recorded_at is not None and opp.need_recorded_at < t
    return replace(
        opp,
        status=status,
        closed_at=closed_at,
        checkpoints=tuple(cp for cp in opp.checkpoints if cp.entered_at < t),
        consents=tuple(
            replace(c, withdrawn_at=c.withdrawn_at if c.withdrawn_at is not None and c.withdrawn_at < t else None)
            for c in opp.consents
            if c.granted_at < t
        ),
        need_recorded_at=opp.need_recorded_at if need_known else None,
        need_kind=opp.need_kind if need_known else None,
        prequalifications=tuple(p for p in opp.prequalifications if p.at < t),
    )


def new_findings(opp: OpportunityFacts, since: datetime, until: datetime) -> list[Finding]:
    """The exceptions of `opp` new in `[since, until)` (module docstring), as they read at `until`."""
    now = as_of(opp, until)
    if now is None:
        return []
    before = as_of(opp, since)
    broken_before = {f.rule for f in findings(before)} if before is not None else set()
    return [f for f in findings(now) if f.rule not in broken_before]


def _changed_within(since: datetime, until: datetime):  # noqa: ANN202
    """The ids of the opportunities opened, closed or with a checkpoint entered in the window."""

    def within(col):  # noqa: ANN001, ANN202
        return and_(col >= since, col < until)

    return union(
        select(Opportunity.id).where(or_(within(Opportunity.opened_at), within(Opportunity.closed_at))),
        select(Checkpoint.opportunity_id).where(within(Checkpoint.entered_at)),
    )


def _render(
    manager: Employee, day: str, items: list[tuple[OpportunityFacts, Finding]], names: dict[str, str]
) -> tuple[str, str]:
    n = len(items)
    subject = f"Practice audit {day}: {n} new exception{'s' if n != 1 else ''} in your team"
    lines = [
        f"Hello {manager.name},",
        "",
        f"The practice audit found {n} new exception{'s' if n != 1 else ''} in your team's opportunities "
        "since the last daily review:",
        "",
    ]
    for opp, f in items:
        owner = names.get(opp.owner_id, opp.owner_id)
        lines += [
            f"- {opp.id} ({opp.product}, {owner}, opened {when(opp.opened_at)}): {f.rule}",
            f"  {f.detail}",
        ]
    lines += ["", "Every exception, old and new: GET /v1/reports/practice-audit?owner_id=EMPLOYEE_ID", ""]
    return subject, "\n".join(lines)


class DailyActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], mailer: Mailer, catalog: ProcessCatalog) -> None:
        self.sessions = sessions
        self.mailer = mailer
        self.catalog = catalog

    @activity.defn(name=MAIL_NEW_EXCEPTIONS)
    async def mail_new_exceptions(self, req: NewExceptionsRequest) -> NewExceptionsMailed:
        """E-mail each manager the new exceptions of their team (module docstring)."""
        async with self.sessions() as session:
            staff = list(await session.scalars(select(Employee)))
            members = {e.id: e.manager_id for e in staff if e.manager_id is not None}
            wanted = set(req.manager_ids) if req.manager_ids is not None else None
            managers = {
                e.id: e
                for e in staff
                if e.active and e.email and e.id in set(members.values()) and (wanted is None or e.id in wanted)
            }
            team = [m for m, boss in members.items() if boss in managers]
            if not team:
                return NewExceptionsMailed(managers=0, exceptions=0)
            facts = await load_facts(
                session,
                self.catalog,
                [
                    Opportunity.owner_id.in_(select(Employee.id).where(Employee.manager_id.in_(sorted(managers)))),
                    Opportunity.id.in_(_changed_within(req.since, req.until)),
                ],
            )
        per_manager: dict[str, list[tuple[OpportunityFacts, Finding]]] = defaultdict(list)
        for opp in facts:
            for f in new_findings(opp, req.since, req.until):
                per_manager[members[opp.owner_id]].append((opp, f))
        names = {e.id: e.name for e in staff}
        day = req.day.isoformat()
        async with self.sessions.begin() as session:  # recorded; the sender delivers them
            for manager_id in sorted(per_manager):
                manager = managers[manager_id]
                subject, body = _render(manager, day, per_manager[manager_id], names)
                await self.mailer.record_for(session, f"practice-audit:{day}", [manager], subject, body)
        return NewExceptionsMailed(managers=len(per_manager), exceptions=sum(len(v) for v in per_manager.values()))

    @activity.defn(name=REBUILD_LEAD_MODEL)
    async def rebuild_lead_model(self, _: None = None) -> LeadModelRebuilt:
        """Rebuild the lead model's tallies from the decided referrals (module docstring)."""
        async with self.sessions.begin() as session:
            await session.get(LeadFeatureCount, (TOTAL, TOTAL), with_for_update=True)
            # A decided referral with every feature recorded (one planted without them, by an
            # import say, cannot be counted: each feature's tallies must add up to the totals).
            decided = and_(
                Referral.decided_at.is_not(None), *(Referral.features[f].as_string().is_not(None) for f in FEATURES)
            )
            won = func.coalesce(func.sum(case((Referral.status == "converted", 1), else_=0)), 0)
            lost = func.coalesce(func.sum(case((Referral.status != "converted", 1), else_=0)), 0)
            # One statement, so one snapshot: referrals are decided while this runs, and
            # separate queries for the totals and each feature (each its own snapshot under
            # READ COMMITTED, or SQLite's autocommit reads) were seen not to add up.
            values = [Referral.features[f].as_string() for f in FEATURES]
            groups = (await session.execute(select(*values, won, lost).where(decided).group_by(*values))).all()
            total_won = sum(int(g[-2]) for g in groups)
            total_lost = sum(int(g[-1]) for g in groups)
            wanted: dict[tuple[str, str], tuple[int, int]] = {}
            if total_won or total_lost:
                wanted[(TOTAL, TOTAL)] = (total_won, total_lost)
            for g in groups:
                for feature, v in zip(FEATURES, g[:-2], strict=True):
                    w, lo = wanted.get((feature, v), (0, 0))
                    wanted[(feature, v)] = (w + int(g[-2]), lo + int(g[-1]))
            try:  # the tallies add up by construction; never write a model routing cannot read
                LeadModel.from_dict(
                    {
                        "won": int(total_won),
                        "lost": int(total_lost),
                        "counts": {f: {v: c for (g, v), c in wanted.items() if g == f} for f in FEATURES},
                    }
                )
            except ValueError as exc:
                raise ApplicationError(f"the rebuilt lead model does not add up: {exc}", non_retryable=True) from exc
            repaired = 0
            for row in list(await session.scalars(select(LeadFeatureCount))):
                key = (row.feature, row.value)
                if key not in wanted:
                    await session.delete(row)
                    repaired += 1
                    continue
                w, lo = wanted.pop(key)
                if (row.won, row.lost) != (w, lo):
                    row.won, row.lost = w, lo
                    repaired += 1
            for (feature, v), (w, lo) in wanted.items():
                session.add(LeadFeatureCount(feature=feature, value=v, won=w, lost=lo))
                repaired += 1
        return LeadModelRebuilt(
            decided=int(total_won) + int(total_lost), won=int(total_won), lost=int(total_lost), repaired=repaired
        )

    @activity.defn(name=REFRESH_AUDIT_FINDINGS)
    async def refresh_audit_findings(self, _: None = None) -> AuditFindingsRefreshed:
        """Judge the opportunities left stale (store/audit_findings.py), heartbeating after
        every batch; a retry goes on with the ones still stale."""
        judged = await refresh_stale(self.sessions, self.catalog, progress=activity.heartbeat)
        return AuditFindingsRefreshed(judged=judged)

    @activity.defn(name=PURGE_EXPIRED)
    async def purge_expired(self, now: datetime) -> ExpiredPurged:
        """Purge the records past their retention as of the review's `until`
        (store/upkeep.py); a retry deletes what is left."""
        purged = await upkeep.purge_expired(self.sessions, now)
        return ExpiredPurged(idempotency_records=purged.idempotency_records, event_claims=purged.event_claims)

    def all(self) -> list:
        return [self.mail_new_exceptions, self.rebuild_lead_model, self.refresh_audit_findings, self.purge_expired]
