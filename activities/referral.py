"""Activities that record a referral's lifecycle, route it, score it, convert it and
tell people about it.

Idempotency: the referral row by id, history rows by (referral, seq), the customer,
household and need of a conversion by ids derived from the referral, the opportunity by
its workflow id, e-mails by (occasion, recipient). An e-mail a change causes (a routing, a
hand-on) is recorded in the outbox in the change's transaction; none of these activities
talks to SMTP (activities/mail.py delivers). The lead model learns from a decided
referral only in the transaction that moves its row out of an open status, so a retry
cannot count it twice.
"""

from __future__ import annotations

import copy
import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, ScalarSelect, Select, bindparam, case, func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.errors import Overtaken
from activities.mail import Addressee, Contact, Mailer
from domain import records
from domain.ids import referral_customer_id, referral_household_id, referral_need_id
from domain.invariants import InvariantBroken, required
from domain.opportunity import OpportunityInput
from domain.referral import OPEN_STATUSES, WORKING_STATUSES, HistoryEntry, Routed
from domain.routing import Candidate, RoutingDecision, Team, reachable, route
from domain.scoring import FEATURES, LeadFeatures, LeadModel
from domain.types import LineOfBusiness, Product, Role
from store.db import InsertFor, for_session, insert_if_missing, per_database
from store.models import (
    Customer,
    Employee,
    EmployeeWorkload,
    Household,
    LeadFeatureCount,
    Need,
    Notification,
    Referral,
    ReferralHistory,
    TeamVersion,
    UTCDateTime,
)
from store.queries import referrer_tallies, score_from_tallies, territory_managers
from workflows.starts import Starts

TOTAL = "*"


def _learn_statement(insert: InsertFor) -> Insert:
    """`learn`'s statement for one database, built once: each (feature, value) row counted
    up, made if missing."""
    t = LeadFeatureCount.__table__
    new = insert(t)
    return new.on_conflict_do_update(
        index_elements=[t.c.feature, t.c.value],
        set_={"won": t.c.won + new.excluded.won, "lost": t.c.lost + new.excluded.lost},
    )


_LEARN = per_database(_learn_statement)


async def learn(session: AsyncSession, features: dict[str, str], won: bool) -> None:
    """Count one decided referral into the lead model: the totals' row and each of its
    feature values', in one statement (it was a locked read and an UPDATE per row). Rows
    are written in sorted order, so two decisions at once take their row locks in the
    same order and never deadlock (PostgreSQL)."""
    rows = sorted([(TOTAL, TOTAL), *features.items()])
    params = [{"feature": f, "value": v, "won": int(won), "lost": int(not won)} for f, v in rows]
    await session.execute(for_session(_LEARN, session), params)


def _counts_toward_load(status: str | None, assignee_id: str | None) -> str | None:
    return assignee_id if status in WORKING_STATUSES else None


def _bump_statement(insert: InsertFor, room: bool = False) -> Insert:
    """`_bump`'s statement for one database, built once: the row counted up (its
    assignment stamped when `at` is given), or made with the count if missing. With
    `room` (`_claim`'s): counted only while under `capacity`, and its row count kept (an
    INSERT's count is kept only when asked)."""
    w = EmployeeWorkload.__table__
    new = insert(w).values(
        employee_id=bindparam("whose"),
        open_referrals=bindparam("start"),
        last_assigned_at=bindparam("at", type_=UTCDateTime),
    )
    upsert = new.on_conflict_do_update(
        index_elements=[w.c.employee_id],
        set_={
            "open_referrals": w.c.open_referrals + bindparam("delta"),
            "last_assigned_at": func.coalesce(new.excluded.last_assigned_at, w.c.last_assigned_at),
        },
        where=w.c.open_referrals < bindparam("capacity") if room else None,
    )
    return upsert.execution_options(preserve_rowcount=True) if room else upsert


_BUMP = per_database(_bump_statement)
_CLAIM = per_database(functools.partial(_bump_statement, room=True))


async def _bump(session: AsyncSession, employee_id: str, delta: int, assigned_at: datetime | None) -> None:
    """Add `delta` to an employee's open referrals (and stamp an assignment), in one
    statement that makes their workload row if it is missing (two routings may make it
    at once: the upsert lets both through)."""
    params = {"whose": employee_id, "delta": delta, "start": max(delta, 0), "at": assigned_at}
    await session.execute(for_session(_BUMP, session), params)


async def _assign(
    session: AsyncSession,
    row: Referral,
    status: str,
    assignee_id: str | None,
    at: datetime,
    claimed: bool = False,
) -> None:
    """Change a referral's status and assignee, keeping employee_workload in step.
    `claimed`: the new assignee's count and stamp are written already (`_claim`)."""
    before = _counts_toward_load(row.status, row.assignee_id)
    after = _counts_toward_load(status, assignee_id)
    newly_assigned = status == "assigned" and (row.status != "assigned" or row.assignee_id != assignee_id)
    row.status, row.assignee_id = status, assignee_id
    if newly_assigned:
        row.assigned_at = at
    stamp = at if newly_assigned else None
    if before != after:
        if after is not None and not claimed:  # two rows: locked in id order first
            await _lock_workloads(session, before, after)
        if before is not None:
            await _bump(session, before, -1, None)
        if after is not None and not claimed:
            await _bump(session, after, +1, stamp)
    elif stamp is not None and assignee_id is not None:
        await _bump(session, assignee_id, 0, stamp)


async def _claim(session: AsyncSession, candidate: Candidate, at: datetime) -> bool:
    """Count one more referral against `candidate` and stamp the assignment if they still
    have room, deciding under the lock of their workload row (made if missing), in one
    statement: concurrent routings that picked the same employee from the same load figure
    take turns on the row, and the second sees the first's assignment, so capacity holds
    (PostgreSQL re-checks the WHERE on the row it waited for; SQLite has one writer at a
    time). False: they are full, and nothing was written (PostgreSQL still holds their
    row's lock until commit). A missing row is made with a count of one unchecked: the
    pick came from `route`, which picks nobody at capacity, so capacity was at least one."""
    params = {"whose": candidate.employee_id, "delta": 1, "start": 1, "at": at, "capacity": candidate.capacity}
    result = await session.execute(for_session(_CLAIM, session), params)
    return bool(result.rowcount)


#: Workload rows a transaction writes two of, locked first and in employee-id order
#: (`_lock_workloads`): a re-routing (the new assignee's claim, the count it leaves) and a
#: reassignment (`_assign`). Taken claim first, two re-routings crosswise at once (Bob's
#: referral to Ann while Ann's goes to Bob) took the rows in opposite orders, and
#: PostgreSQL failed one of them as a deadlock. A second pick, after a claim found its pick
#: full, can still lock out of order: that takes a concurrent routing filling the first
#: pick as well. (SQLite has one writer at a time and reads this as a plain SELECT.)
_LOCK_WORKLOADS = (
    select(EmployeeWorkload.employee_id)
    .where(EmployeeWorkload.employee_id.in_(bindparam("ids", expanding=True)))
    .order_by(EmployeeWorkload.employee_id)
    .with_for_update()
)


async def _lock_workloads(session: AsyncSession, *employee_ids: str | None) -> None:
    """Lock these employees' workload rows in id order (`_LOCK_WORKLOADS`), before writing
    two of them; nothing for fewer than two."""
    ids = sorted({e for e in employee_ids if e is not None})
    if len(ids) > 1:
        await session.execute(_LOCK_WORKLOADS, {"ids": ids})


def _with_load(c: Candidate, open_load: int, last_assigned_at: datetime | None) -> Candidate:
    mine = copy.copy(c)
    mine.open_load, mine.last_assigned_at = open_load, last_assigned_at
    return mine


def _history_values(referral_id: str, entry: HistoryEntry) -> dict[str, Any]:
    return {
        "referral_id": referral_id,
        "seq": entry.seq,
        "status": entry.status,
        "at": entry.at,
        "actor": entry.actor,
        "via": entry.via,
        "note": entry.note,
        "assignee_id": entry.assignee_id,
    }


def _history_row(referral_id: str, entry: HistoryEntry) -> ReferralHistory:
    return ReferralHistory(**_history_values(referral_id, entry))


#: (attribute, column) of every column of a referral row.
_REFERRAL_COLUMNS = [(a.key, a.columns[0].key) for a in inspect(Referral).column_attrs]


def _row_values(row: Referral) -> dict[str, Any]:
    """What a new (transient) referral row was given, by column, as an INSERT's
    parameters: columns left unset take their defaults."""
    given = vars(row)
    return {column: given[attr] for attr, column in _REFERRAL_COLUMNS if attr in given}


#: A new referral's history entries, written by a statement built once (`_route`).
_INSERT_HISTORY = insert(ReferralHistory.__table__)


async def _has_entry(session: AsyncSession, referral_id: str, seq: int) -> bool:
    found = await session.scalar(
        select(ReferralHistory.id).where(ReferralHistory.referral_id == referral_id, ReferralHistory.seq == seq)
    )
    return found is not None


def _team_statement() -> ScalarSelect:
    """The team cache's key: the number the database raises on every write to `employees`
    (store.models.TeamVersion, kept by triggers), so a POST or PATCH of an employee, an
    import or an operator's SQL applies to the very next routing, and an unchanged team
    costs one primary-key read instead of a scan of every employee."""
    return select(TeamVersion.version).where(TeamVersion.id == 1).scalar_subquery()


_TEAM = _team_statement()


def _team_key(version: int | None) -> int:
    """The team cache's key as read; without the row (migration 0013 not applied, or the
    row deleted by hand) routing cannot know when the team changes, and says so."""
    if version is None:
        raise InvariantBroken("team_version has no row: routing cannot tell when the team changes")
    return int(version)


def _opening_facts_statement() -> Select:
    """Built once: whether the referral exists, the team cache's key, the lead model's
    totals and the referrer's tallies, in one round trip."""
    tallies = referrer_tallies((bindparam("rtype"), bindparam("rid")), bindparam("since", type_=UTCDateTime)).subquery()
    total = (LeadFeatureCount.feature == TOTAL) & (LeadFeatureCount.value == TOTAL)
    return select(
        tallies,
        _TEAM.label("team"),
        select(LeadFeatureCount.won).where(total).scalar_subquery().label("won"),
        select(LeadFeatureCount.lost).where(total).scalar_subquery().label("lost"),
        select(Referral.id).where(Referral.id == bindparam("referral_id")).scalar_subquery().label("existing"),
    )


_OPENING_FACTS = _opening_facts_statement()

#: The e-mail address and open work (None: no workload row yet) of some employees (`ids`), built once.
_WORKLOAD = (
    select(Employee.id, Employee.email, EmployeeWorkload.open_referrals, EmployeeWorkload.last_assigned_at)
    .outerjoin(EmployeeWorkload, EmployeeWorkload.employee_id == Employee.id)
    .where(Employee.id.in_(bindparam("ids", expanding=True)))
)


class ReferralActivities:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        mailer: Mailer,
        starts: Starts,
        referrer_window_days: int,
    ) -> None:
        self.sessions = sessions
        self.mailer = mailer
        self.starts = starts
        self.window = timedelta(days=referrer_window_days)
        # Caches for routing speed; each is checked against the store on every use.
        self._team: tuple[int, Team] | None = None
        self._model: tuple[tuple[int, int], LeadModel] | None = None

    @activity.defn(name=records.OPEN_REFERRAL)
    async def open_referral(self, rec: records.OpenReferral) -> records.ReferralOpened:
        """Record, score and route a new referral in one transaction.

        Speed matters here (bench/bench_referral_service.py): one query reads whether the
        referral exists, the team cache's key, the lead model's totals and the referrer's
        tallies; then the candidates' workload and addresses, the claim of the pick, the
        referral and its history, the e-mail.
        """
        ref = rec.input
        referrer = (ref.referrer.type, ref.referrer.id)
        async with self.sessions.begin() as session:
            facts = await self._opening_facts(session, ref.referral_id, referrer, rec.created.at - self.window)
            if facts.existing is None:
                features = LeadFeatures.from_facts(ref.facts(), ref.source)
                model = await self._lead_model(session, (int(facts.won or 0), int(facts.lost or 0)))
                scored = model.score(features)
                row = Referral(
                    id=ref.referral_id,
                    status="unassigned",
                    referrer_type=ref.referrer.type,
                    referrer_id=ref.referrer.id,
                    referrer_line_of_business=ref.referrer_line_of_business.value
                    if ref.referrer_line_of_business
                    else None,
                    customer_id=ref.customer_id,
                    prospect=ref.prospect.model_dump(mode="json") if ref.prospect else None,
                    expressed_interest=ref.expressed_interest.value,
                    value=ref.value,
                    notes=ref.notes,
                    city=ref.city,
                    state=ref.state,
                    source=ref.source,
                    lead_score=scored.score,
                    lead_score_factors=[f.model_dump(mode="json") for f in scored.factors],
                    features=dict(zip(FEATURES, features.values(), strict=True)),
                    workflow_id=rec.workflow_id,
                    last_seq=rec.created.seq,
                    created_at=rec.created.at,
                )
                routed = await self._route(session, row, rec.route, created=rec.created, team=_team_key(facts.team))
            else:  # a retry: what the first attempt recorded stands
                row = required(
                    await session.get(Referral, ref.referral_id, with_for_update=True), f"referral {ref.referral_id}"
                )
                routed = await self._route(session, row, rec.route)
            return records.ReferralOpened(
                lead_score=row.lead_score,
                lead_score_factors=row.lead_score_factors,
                referrer_score=score_from_tallies(facts),
                routed=routed,
            )

    async def _opening_facts(self, session: AsyncSession, referral_id: str, referrer: tuple[str, str], since: datetime):  # noqa: ANN202
        params = {"referral_id": referral_id, "rtype": referrer[0], "rid": referrer[1], "since": since}
        return (await session.execute(_OPENING_FACTS, params)).one()

    @activity.defn(name=records.ROUTE_REFERRAL)
    async def route_referral(self, req: records.RouteReferral) -> Routed:
        """Re-route a referral (after a rejection or a lapse, recorded in the same transaction)."""
        async with self.sessions.begin() as session:
            row = required(
                await session.get(Referral, req.referral_id, with_for_update=True), f"referral {req.referral_id}"
            )
            return await self._route(session, row, req)

    async def _route(
        self,
        session: AsyncSession,
        row: Referral,
        req: records.RouteReferral,
        created: HistoryEntry | None = None,
        team: int | None = None,
    ) -> Routed:
        """Route `row` and record the decision. A new referral (`created` given; `row` not in
        the session) is inserted once, its decision in it, with its first two history
        entries, by statements built once: the ORM's flush cost more than the INSERTs."""
        if created is None:  # a re-routing: what is recorded already, and the team cache's key, in one query
            recorded, team = await self._routing_facts(session, row.id, req)
            if req.seq in recorded:  # a retry: the decision is recorded
                return Routed(
                    decision=RoutingDecision(
                        assignee_id=row.assignee_id,
                        queue=row.queue,
                        rule=row.routing_rule,
                        reason=row.routing_reason or "",
                    )
                )
            if req.preceding is not None and req.preceding.seq not in recorded:
                session.add(_history_row(row.id, req.preceding))
        candidates, contacts = await self._candidates(session, req, team)
        excluded = frozenset(req.exclude)
        counted = _counts_toward_load(row.status, row.assignee_id)
        while True:  # the pick must still have room once its workload row is locked
            decision = route(req.rules, req.facts, candidates, excluded)
            chosen = next((c for c in candidates if c.employee_id == decision.assignee_id), None)
            if chosen is None or chosen.employee_id == counted:  # nobody, or (never: excluded) the same
                claimed = False
                break
            await _lock_workloads(session, counted, chosen.employee_id)  # a re-routing writes both
            if claimed := await _claim(session, chosen, req.at):
                break
            excluded |= {chosen.employee_id}  # filled by a concurrent routing meanwhile
        assigned = decision.assignee_id is not None
        row.queue = decision.queue
        row.routing_rule = decision.rule
        row.routing_reason = decision.reason
        row.sla_deadline = req.accept_deadline if assigned else None
        row.last_seq = req.seq
        await _assign(
            session, row, "assigned" if assigned else "unassigned", decision.assignee_id, req.at, claimed=claimed
        )
        entry = HistoryEntry(
            seq=req.seq,
            status=row.status,
            at=req.at,
            actor=req.actor,
            via=req.via,
            note=decision.reason,
            assignee_id=decision.assignee_id,
        )
        if created is not None:
            if not await insert_if_missing(
                session, Referral, **_row_values(row)
            ):  # an earlier attempt, still running, recorded it meanwhile
                raise Overtaken(f"referral {row.id} was recorded by another attempt")
            await session.execute(_INSERT_HISTORY, [_history_values(row.id, created), _history_values(row.id, entry)])
        else:
            session.add(_history_row(row.id, entry))
        # Who must hear of it, in this same transaction (the workflow's notify finds it recorded).
        if req.preceding is not None and req.preceding.status == "lapsed":
            lapsed = records.ReferralNotice(
                referral_id=row.id,
                kind="lapsed",
                occasion=str(req.preceding.seq),
                employee_id=req.preceding.assignee_id,
            )
            await self._tell(session, row, lapsed)
        told = records.ReferralNotice(
            referral_id=row.id,
            kind="assigned" if assigned else "unassigned",
            occasion=str(req.seq),
            employee_id=decision.assignee_id,
            note=None if assigned else decision.reason,
        )
        await self._tell(session, row, told, contacts)
        return Routed(decision=decision)

    async def _routing_facts(
        self, session: AsyncSession, referral_id: str, req: records.RouteReferral
    ) -> tuple[set[int], int]:
        """Which of this routing's history entries are recorded already, and the team cache's key."""
        seqs = [req.seq] + ([req.preceding.seq] if req.preceding else [])
        row = (
            await session.execute(
                select(
                    _TEAM, *(func.coalesce(func.max(case((ReferralHistory.seq == n, 1), else_=0)), 0) for n in seqs)
                ).where(ReferralHistory.referral_id == referral_id)
            )
        ).one()
        return {n for n, present in zip(seqs, row[1:], strict=True) if present}, _team_key(row[0])

    async def _lead_model(self, session: AsyncSession, key: tuple[int, int]) -> LeadModel:
        """The lead model, re-read only when a decision has changed its totals (`key`)."""
        if self._model is None or self._model[0] != key:
            counts: dict[str, dict[str, list[int]]] = {f: {} for f in FEATURES}
            for c in await session.scalars(select(LeadFeatureCount).where(LeadFeatureCount.feature != TOTAL)):
                if c.feature in counts:
                    counts[c.feature][c.value] = [c.won, c.lost]
            self._model = (key, LeadModel.from_dict({"won": key[0], "lost": key[1], "counts": counts}))
        return self._model[1]

    async def _candidates(
        self, session: AsyncSession, req: records.RouteReferral, team: int | None = None
    ) -> tuple[list[Candidate], dict[str, Contact]]:
        """The active employees a matching rule could pick, with their open work now, and
        their e-mail addresses (read with the work: the one picked is told at once).

        The team is re-read only when the employees changed (`_team_statement`; the key
        is read before the team, so a change committed in between costs a re-read, never a
        stale team), and a PATCH applies to the very next routing; an inactive employee is
        never a candidate. The workload is read for the reachable employees alone, into
        copies, so concurrent routings in this worker never share a load figure.
        """
        key = team if team is not None else _team_key(await session.scalar(_TEAM))
        if self._team is None or self._team[0] != key:
            active = await session.scalars(select(Employee).where(Employee.active))
            members = Team(
                Candidate(
                    employee_id=e.id,
                    role=Role(e.role),
                    line_of_business=LineOfBusiness(e.line_of_business),
                    products=[Product(p) for p in e.products],
                    cities=e.cities,
                    states=e.states,
                    capacity=e.capacity,
                )
                for e in active
            )
            self._team = (key, members)
        near = reachable(req.rules, req.facts, self._team[1])
        if not near:
            return [], {}
        workload, contacts = {}, {}
        for employee_id, email, load, last in await session.execute(_WORKLOAD, {"ids": [c.employee_id for c in near]}):
            contacts[employee_id] = Contact(employee_id, email)
            if load is not None:
                workload[employee_id] = (load, last)
        candidates = [
            copy.copy(c) if c.employee_id not in workload else _with_load(c, *workload[c.employee_id]) for c in near
        ]
        return candidates, contacts

    @activity.defn(name=records.RECORD_REFERRAL_CHANGE)
    async def record_change(self, change: records.ReferralChange) -> None:
        async with self.sessions.begin() as session:
            row = required(
                await session.get(Referral, change.referral_id, with_for_update=True), f"referral {change.referral_id}"
            )
            if await _has_entry(session, row.id, change.entry.seq):
                return
            session.add(_history_row(row.id, change.entry))
            if change.entry.status == "assigned":  # handed on (reassign): the new assignee hears of it
                handed = records.ReferralNotice(
                    referral_id=row.id,
                    kind="assigned",
                    occasion=str(change.entry.seq),
                    employee_id=change.entry.assignee_id,
                )
                await self._tell(session, row, handed)
            if change.entry.seq < row.last_seq:
                return
            decided_now = change.won is not None and row.status in OPEN_STATUSES
            row.last_seq = change.entry.seq
            await _assign(session, row, change.status, change.assignee_id, change.entry.at)
            row.queue = change.queue
            row.sla_deadline = change.sla_deadline
            if change.accepted_at:
                row.accepted_at = change.accepted_at
            if change.close_reason:
                row.close_reason = change.close_reason
            if change.opportunity_id:
                row.opportunity_id = change.opportunity_id
            if change.customer_id:
                row.customer_id = change.customer_id
            if decided_now:
                row.decided_at = change.entry.at
                await learn(session, row.features, bool(change.won))

    @activity.defn(name=records.PREPARE_CONVERSION)
    async def prepare_conversion(self, req: records.PrepareConversion) -> records.Conversion:
        """The customer (and household) for a prospect, and the need, recorded once: each
        inserted unless there, so a retry (or an attempt racing it) writes nothing twice."""
        async with self.sessions.begin() as session:
            row = required(await session.get(Referral, req.referral_id), f"referral {req.referral_id}")
            customer_id = row.customer_id
            if customer_id is None:
                customer_id = referral_customer_id(row.id)
                p = row.prospect or {}
                household_id = referral_household_id(row.id)
                await insert_if_missing(
                    session, Household, id=household_id, name=f"{p.get('name', 'Prospect')} household"
                )
                await insert_if_missing(
                    session,
                    Customer,
                    id=customer_id,
                    household_id=household_id,
                    name=p.get("name") or "Prospect",
                    email=p.get("email"),
                    phone=p.get("phone"),
                    employer=p.get("employer"),
                    city=p.get("city"),
                    state=p.get("state"),
                    created_at=req.at,
                )
            need_id = referral_need_id(row.id)
            await insert_if_missing(
                session,
                Need,
                id=need_id,
                customer_id=customer_id,
                kind=req.need_kind,
                description=req.need_description,
                recorded_by=req.recorded_by,
                recorded_at=req.at,
            )
        return records.Conversion(customer_id=customer_id, need_id=need_id)

    @activity.defn(name=records.START_OPPORTUNITY)
    async def start_opportunity(self, wf_input: OpportunityInput) -> None:
        await self.starts.open_opportunity(wf_input)

    @activity.defn(name=records.NOTIFY_REFERRAL)
    async def notify(self, notice: records.ReferralNotice) -> int:
        """Record the notice's e-mails, unless the change that caused it recorded them
        already (a routing, a hand-on): a reminder or an escalation, which no write causes,
        or a workflow recorded before that. Returns how many recipients it has."""
        async with self.sessions.begin() as session:
            row = required(await session.get(Referral, notice.referral_id), f"referral {notice.referral_id}")
            recorded = await session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.id.startswith(_notice_id(notice) + ":", autoescape=True))
            )
            if recorded:
                return int(recorded)
            return await self._tell(session, row, notice)

    async def _tell(
        self,
        session: AsyncSession,
        row: Referral,
        notice: records.ReferralNotice,
        contacts: dict[str, Contact] | None = None,
    ) -> int:
        """Record the notice's e-mail to whoever must read it, in the caller's transaction
        (the sender delivers it); returns how many recipients it has."""
        recipients = await self._recipients(session, notice, row, contacts or {})
        who = await self._who(session, row)
        subject, body = _render(notice, row, who)
        await self.mailer.record_for(session, _notice_id(notice), recipients, subject, body)
        return len(recipients)

    def all(self) -> list:
        return [
            self.open_referral,
            self.route_referral,
            self.record_change,
            self.prepare_conversion,
            self.start_opportunity,
            self.notify,
        ]

    async def _recipients(
        self, session: AsyncSession, notice: records.ReferralNotice, row: Referral, contacts: dict[str, Contact]
    ) -> list[Addressee]:
        """Who reads the notice; `contacts`: addresses read already (a routing's candidates)."""
        if notice.kind in ("assigned", "reminder"):
            if notice.employee_id in contacts:
                return [contacts[notice.employee_id]]
            e = await session.get(Employee, notice.employee_id) if notice.employee_id else None
            return [e] if e else []
        if notice.kind in ("lapsed", "escalation") and notice.employee_id:
            e = await session.get(Employee, notice.employee_id)
            if e is not None and e.manager_id:
                manager = await session.get(Employee, e.manager_id)
                if manager is not None and manager.active:  # one who left the bank reads no mail
                    return [manager]
        # The managers of the referral's territory; if none, every manager: an unattended
        # referral must reach someone.
        return await territory_managers(session, [row.state] if row.state else [])

    async def _who(self, session: AsyncSession, row: Referral) -> str:
        if row.customer_id:
            c = await session.get(Customer, row.customer_id)
            if c is not None:
                return f"{c.name} (customer {c.id}" + (f", {c.city}" if c.city else "") + ")"
        p = row.prospect or {}
        contact = ", ".join(x for x in (p.get("phone"), p.get("email")) if x)
        return f"{p.get('name', 'a prospect')} (prospect" + (f": {contact}" if contact else "") + ")"


def _notice_id(notice: records.ReferralNotice) -> str:
    """The notice's message id; each recipient's message adds `:<employee id>`."""
    return f"referral:{notice.referral_id}:{notice.kind}:{notice.occasion}"


def _render(notice: records.ReferralNotice, row: Referral, who: str) -> tuple[str, str]:
    value = f" worth {row.value:,.2f}" if row.value is not None else ""
    where = ", ".join(x for x in (row.city, row.state) if x)
    details = "\n".join(
        [
            f"Referral:   {row.id}",
            f"Customer:   {who}",
            f"Interest:   {row.expressed_interest}{value}",
            f"Where:      {where or 'unknown'}",
            f"Referred by {row.referrer_type} {row.referrer_id}",
            f"Lead score: {row.lead_score}/99",
            f"Notes:      {row.notes or '-'}",
        ]
    )
    subjects = {
        "assigned": f"New referral: {row.expressed_interest}{value} for {who.split(' (')[0]}",
        "unassigned": f"Unassigned referral waiting: {row.expressed_interest}{value}",
        "lapsed": f"Referral not accepted in time, re-routed: {row.id}",
        "reminder": f"Follow up on your referral: {row.expressed_interest} for {who.split(' (')[0]}",
        "escalation": f"Referral not followed up: {row.id}",
    }
    intros = {
        "assigned": "A referral was routed to you. Please accept or reject it.",
        "unassigned": "No routing rule could place this referral; it waits in the fallback queue "
        f"'{row.queue}'. Please assign it.",
        "lapsed": "This referral was not accepted within the acceptance SLA and has been re-routed.",
        "reminder": "You accepted this referral but have not converted or closed it yet.",
        "escalation": "This accepted referral has not been converted or closed after two follow-up periods.",
    }
    note = f"\n\n{notice.note}" if notice.note else ""
    return subjects[notice.kind], f"{intros[notice.kind]}{note}\n\n{details}\n"
