"""The practice audit: the five rules of spec/API.md ("Reports and review"), written once.

Each rule is a pure function over one opportunity's facts as the store holds them
(`OpportunityFacts`: plain rows, no session), returning the sentence a manager reads, or
None when the opportunity keeps the rule. `load_facts` reads those facts for a set of
opportunities in a handful of queries (not one per opportunity). The report
(`practice_audit`, `GET /v1/reports/practice-audit`) and the journey's review
(`customer_review`, `review[]` of `GET /v1/customers/{id}/journey`) both call `findings`,
so they can never disagree. The rules read the system of record only: imported and live
records are judged alike.

The rules
---------
- `consent_missing`: the opportunity is won, and no consent of its customer for its
  product was in force when it was won: granted at or before the win and not withdrawn at
  or before it. A consent withdrawn *after* the win still counts (the sale had it); one
  withdrawn before the win, or granted after it, does not. When it was won (`won_at`): its
  `closed_at`, which every decided row has (a CHECK, migration 0014).
- `need_after_opportunity`: its need was recorded after `opened_at`, or it has none.
- `stage_out_of_order`: its checkpoints (by `seq`) do not follow the stage order of the
  process version it recorded (`process_version`, from the process catalog): the first
  must be the first stage and each next one the stage after the previous one. A stage
  skipped (the first checkpoint too), repeated or gone back to breaks it, as does a
  stage the process does not have or any checkpoint after `closed_lost`; `closed_lost`
  itself may follow any stage.
- `evidence_missing`: a checkpoint lacks evidence its stage asks for in that process
  version; blank text counts as missing (the rule the workflows apply, `domain.opportunity`).
- `campaign_not_prequalified`: it has a campaign, and its customer had no `qualified`
  prequalification for that campaign at or before `opened_at`.

An opportunity whose process version is not in the catalog cannot be judged against its
stages: `stage_out_of_order` and `evidence_missing` say nothing about it.

Items are ordered by `opened_at`, then opportunity id, then rule name (alphabetical).
Times in the sentences are UTC, to the minute.

The report reads the verdicts kept by store/audit_findings.py (`audit_findings`, one
row per opportunity and rule, written with every change to what the rules read) and judges
on the spot only the opportunities still marked `audit_stale`; both come from these
rules. Changing a rule's verdict or sentence therefore needs a migration that marks every
opportunity stale (store/audit_findings.py says why).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.opportunity import CLOSED_LOST_STAGE, _missing, closed_at_of
from domain.process import ProcessCatalog, ProcessDefinition
from domain.types import Product
from store.models import AuditFinding, Checkpoint, Consent, Need, Opportunity, Prequalification
from store.reports import _snapshot

CONSENT_MISSING = "consent_missing"
NEED_AFTER_OPPORTUNITY = "need_after_opportunity"
STAGE_OUT_OF_ORDER = "stage_out_of_order"
EVIDENCE_MISSING = "evidence_missing"
CAMPAIGN_NOT_PREQUALIFIED = "campaign_not_prequalified"


# ---------------------------------------------------------------- the facts


@dataclass(frozen=True)
class CheckpointFact:
    seq: int
    stage: str
    entered_at: datetime
    evidence: dict[str, Any]


@dataclass(frozen=True)
class ConsentFact:
    """A consent of the opportunity's customer for the opportunity's product."""

    granted_at: datetime
    withdrawn_at: datetime | None = None


@dataclass(frozen=True)
class PrequalificationFact:
    """A prequalification of the opportunity's customer for the opportunity's campaign."""

    at: datetime
    qualified: bool


@dataclass(frozen=True)
class OpportunityFacts:
    id: str
    customer_id: str
    product: str
    owner_id: str
    status: str
    opened_at: datetime
    closed_at: datetime | None = None
    #: The process version it recorded, from the catalog; None when the catalog lacks it.
    process: ProcessDefinition | None = None
    #: Its need's recorded_at and kind; None when it has no need.
    need_recorded_at: datetime | None = None
    need_kind: str | None = None
    campaign_id: str | None = None
    checkpoints: tuple[CheckpointFact, ...] = ()
    consents: tuple[ConsentFact, ...] = ()
    #: Its customer's prequalifications for its campaign (none without a campaign).
    prequalifications: tuple[PrequalificationFact, ...] = ()


def when(at: datetime) -> str:
    """A time as the sentences show it: UTC, to the minute."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def won_at(opp: OpportunityFacts) -> datetime:
    """When a won opportunity was won: its `closed_at` (the store keeps one on every
    decided row: migration 0014's CHECK)."""
    return closed_at_of(opp.id, opp.status, opp.closed_at)


def consent_in_force(consents: Sequence[ConsentFact], at: datetime | None) -> bool:
    """A consent granted at or before `at` and not withdrawn at or before it (`at` None:
    now, so any consent not withdrawn)."""
    if at is None:
        return any(c.withdrawn_at is None for c in consents)
    return any(c.granted_at <= at and (c.withdrawn_at is None or c.withdrawn_at > at) for c in consents)


def stage_name(process: ProcessDefinition | None, key: str) -> str:
    """A stage as the sentences name it; its key when its process (or the catalog) lacks it."""
    if key == CLOSED_LOST_STAGE:
        return "Closed Lost"
    try:
        return process.stage(key).name if process is not None else key
    except KeyError:
        return key


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# ---------------------------------------------------------------- the rules


def consent_missing(opp: OpportunityFacts) -> str | None:
    if opp.status != "won":
        return None
    won = won_at(opp)
    if consent_in_force(opp.consents, won):
        return None
    start = f"Won on {when(won)}"
    withdrawn = [c for c in opp.consents if c.granted_at <= won]
    if withdrawn:
        c = max(withdrawn, key=lambda c: c.granted_at)
        assert c.withdrawn_at is not None
        return (
            f"{start}, but the customer's consent to {opp.product} granted on {when(c.granted_at)} "
            f"had been withdrawn on {when(c.withdrawn_at)}."
        )
    if opp.consents:
        first = min(c.granted_at for c in opp.consents)
        return f"{start}, but the customer's consent to {opp.product} was only granted on {when(first)}."
    return f"{start} without any consent of the customer to {opp.product}."


def need_after_opportunity(opp: OpportunityFacts) -> str | None:
    if opp.need_recorded_at is None:
        return f"Opened on {when(opp.opened_at)} with no recorded need."
    if opp.need_recorded_at > opp.opened_at:
        return (
            f"Opened on {when(opp.opened_at)}, but its need ({opp.need_kind}) was only recorded "
            f"on {when(opp.need_recorded_at)}."
        )
    return None


def stage_out_of_order(opp: OpportunityFacts) -> str | None:
    process = opp.process
    if process is None:
        return None
    keys = [s.key for s in process.stages]
    problems: list[str] = []
    prev = -1  # the index of the stage last entered; -1 before the first checkpoint
    lost = False
    for cp in opp.checkpoints:
        name, at = stage_name(process, cp.stage), when(cp.entered_at)
        if lost:
            problems.append(f"{name} was entered on {at}, after the opportunity was closed lost.")
            continue
        if cp.stage == CLOSED_LOST_STAGE:
            lost = True
            continue
        if cp.stage not in keys:
            problems.append(
                f"It entered {cp.stage} on {at}, a stage the {process.product.value} process "
                f"(version {process.version}) does not have."
            )
            continue
        i = keys.index(cp.stage)
        if i > prev + 1:
            skipped = _and([s.name for s in process.stages[prev + 1 : i]])
            if prev < 0:
                problems.append(f"It started at {name} on {at}, skipping {skipped}.")
            else:
                problems.append(
                    f"{name} was entered on {at} straight from {process.stages[prev].name}, skipping {skipped}."
                )
        elif i == prev:
            problems.append(f"{name} was entered again on {at}.")
        elif i < prev:
            problems.append(f"It went back to {name} from {process.stages[prev].name} on {at}.")
        prev = i
    return " ".join(problems) or None


def missing_evidence(process: ProcessDefinition, cp: CheckpointFact) -> list[str]:
    """The evidence `cp`'s stage asks for that it lacks (blank is missing, as the
    workflows decide); nothing for `closed_lost` or a stage the process does not have."""
    if cp.stage == CLOSED_LOST_STAGE:
        return []
    try:
        stage = process.stage(cp.stage)
    except KeyError:
        return []
    return _missing(stage, cp.evidence or {}, blank_is_missing=True)


def evidence_missing(opp: OpportunityFacts) -> str | None:
    process = opp.process
    if process is None:
        return None
    problems = [
        f"{stage_name(process, cp.stage)} was entered on {when(cp.entered_at)} without the {_and(missing)} it asks for."
        for cp in opp.checkpoints
        if (missing := missing_evidence(process, cp))
    ]
    return " ".join(problems) or None


def campaign_not_prequalified(opp: OpportunityFacts) -> str | None:
    if opp.campaign_id is None:
        return None
    before = [p for p in opp.prequalifications if p.at <= opp.opened_at]
    if any(p.qualified for p in before):
        return None
    start = f"Opened on {when(opp.opened_at)} in campaign {opp.campaign_id}"
    if before:
        last = max(before, key=lambda p: p.at)
        return f"{start}, but the customer's prequalification of {when(last.at)} found them not qualified."
    later = [p.at for p in opp.prequalifications if p.qualified]
    if later:
        return f"{start}, but the customer was only found qualified on {when(min(later))}."
    return f"{start} without the customer being prequalified for it."


#: Every rule by name, in the order items of one opportunity are listed (alphabetical).
RULES: dict[str, Callable[[OpportunityFacts], str | None]] = {
    CAMPAIGN_NOT_PREQUALIFIED: campaign_not_prequalified,
    CONSENT_MISSING: consent_missing,
    EVIDENCE_MISSING: evidence_missing,
    NEED_AFTER_OPPORTUNITY: need_after_opportunity,
    STAGE_OUT_OF_ORDER: stage_out_of_order,
}


@dataclass(frozen=True)
class Finding:
    rule: str
    detail: str


def findings(opp: OpportunityFacts) -> list[Finding]:
    """The rules `opp` breaks, one finding per rule, in rule-name order."""
    return [Finding(rule, detail) for rule, check in RULES.items() if (detail := check(opp)) is not None]


# ---------------------------------------------------------------- Kevin's three questions


@dataclass(frozen=True)
class Review:
    opportunity_id: str
    product: str
    #: Won: a consent was in force when it was won (`consent_missing` does not fire).
    #: Not won: the customer's consent to the product is in force now.
    consent: bool
    #: `need_after_opportunity` does not fire.
    need_before_sale: bool
    #: Neither `stage_out_of_order` nor `evidence_missing` fires (its checkpoints so far).
    all_checkpoints: bool
    #: The rules it breaks (rule-name order).
    exceptions: list[str]


def review(opp: OpportunityFacts) -> Review:
    broken = [f.rule for f in findings(opp)]
    consent = CONSENT_MISSING not in broken if opp.status == "won" else consent_in_force(opp.consents, None)
    return Review(
        opportunity_id=opp.id,
        product=opp.product,
        consent=consent,
        need_before_sale=NEED_AFTER_OPPORTUNITY not in broken,
        all_checkpoints=STAGE_OUT_OF_ORDER not in broken and EVIDENCE_MISSING not in broken,
        exceptions=broken,
    )


# ---------------------------------------------------------------- loading the facts


def _process(catalog: ProcessCatalog, product: str, version: int) -> ProcessDefinition | None:
    try:
        return catalog.get(Product(product), version)
    except ValueError:
        return None


def between(column: Any, opened_from: date | None, opened_to: date | None) -> list[Any]:
    """`column` (an `opened_at`) within the UTC days `opened_from` to `opened_to`, both
    included."""
    conds = []
    if opened_from is not None:
        conds.append(column >= datetime.combine(opened_from, time.min, UTC))
    if opened_to is not None:
        conds.append(column < datetime.combine(opened_to + timedelta(days=1), time.min, UTC))
    return conds


@dataclass(frozen=True)
class _FactStatements:
    """The statements `load_facts` runs, for one choice of opportunities."""

    #: Each opportunity with its need, ordered by opened_at then id.
    rows: Select
    #: Their checkpoints, by opportunity then seq.
    checkpoints: Select
    #: Their customer's consents to their product, by opportunity then granted_at.
    consents: Select
    #: Their customer's prequalifications for their campaign (run only when one has a campaign).
    prequalifications: Select


def _fact_statements(*where: Any) -> _FactStatements:
    chosen = select(Opportunity.id).where(*where)
    return _FactStatements(
        rows=select(
            Opportunity.id,
            Opportunity.customer_id,
            Opportunity.product,
            Opportunity.process_version,
            Opportunity.owner_id,
            Opportunity.status,
            Opportunity.opened_at,
            Opportunity.closed_at,
            Opportunity.campaign_id,
            Need.recorded_at,
            Need.kind,
        )
        .outerjoin(Need, Need.id == Opportunity.need_id)
        .where(*where)
        .order_by(Opportunity.opened_at, Opportunity.id),
        checkpoints=select(
            Checkpoint.opportunity_id, Checkpoint.seq, Checkpoint.stage, Checkpoint.entered_at, Checkpoint.evidence
        )
        .where(Checkpoint.opportunity_id.in_(chosen))
        .order_by(Checkpoint.opportunity_id, Checkpoint.seq),
        consents=select(Opportunity.id, Consent.granted_at, Consent.withdrawn_at)
        .join(Consent, and_(Consent.customer_id == Opportunity.customer_id, Consent.product == Opportunity.product))
        .where(*where)
        .order_by(Opportunity.id, Consent.granted_at),
        prequalifications=select(Opportunity.id, Prequalification.at, Prequalification.qualified)
        .join(
            Prequalification,
            and_(
                Prequalification.customer_id == Opportunity.customer_id,
                Prequalification.campaign_id == Opportunity.campaign_id,
            ),
        )
        .where(*where, Opportunity.campaign_id.is_not(None))
        .order_by(Opportunity.id, Prequalification.at),
    )


#: `load_facts_of`'s statements, built once with the ids as a parameter: the practice
#: audit judges the opportunity of every stage change, and building these four SELECTs
#: afresh cost more than running them (bench/README.md, "The audit's reads built once").
_BY_IDS = _fact_statements(Opportunity.id.in_(bindparam("ids", expanding=True)))


async def load_facts(session: AsyncSession, catalog: ProcessCatalog, where: Sequence[Any]) -> list[OpportunityFacts]:
    """The facts of every opportunity matching `where` (conditions on `Opportunity`),
    ordered by opened_at then id: four queries (three when none has a campaign)."""
    return await _load_facts(session, catalog, _fact_statements(*where), {})


async def load_facts_of(session: AsyncSession, catalog: ProcessCatalog, ids: Sequence[str]) -> list[OpportunityFacts]:
    """`load_facts` of the opportunities `ids`, by statements built once."""
    return await _load_facts(session, catalog, _BY_IDS, {"ids": list(ids)})


async def _load_facts(
    session: AsyncSession, catalog: ProcessCatalog, statements: _FactStatements, params: dict[str, Any]
) -> list[OpportunityFacts]:
    await _snapshot(session)
    rows = (await session.execute(statements.rows, params)).all()
    if not rows:
        return []

    checkpoints: dict[str, list[CheckpointFact]] = defaultdict(list)
    for opp_id, seq, stage, entered_at, evidence in await session.execute(statements.checkpoints, params):
        checkpoints[opp_id].append(CheckpointFact(seq, stage, entered_at, evidence or {}))

    consents: dict[str, list[ConsentFact]] = defaultdict(list)
    for opp_id, granted_at, withdrawn_at in await session.execute(statements.consents, params):
        consents[opp_id].append(ConsentFact(granted_at, withdrawn_at))

    prequalified: dict[str, list[PrequalificationFact]] = defaultdict(list)
    if any(r.campaign_id is not None for r in rows):
        for opp_id, at, qualified in await session.execute(statements.prequalifications, params):
            prequalified[opp_id].append(PrequalificationFact(at, bool(qualified)))

    return [
        OpportunityFacts(
            id=r.id,
            customer_id=r.customer_id,
            product=r.product,
            owner_id=r.owner_id,
            status=r.status,
            opened_at=r.opened_at,
            closed_at=r.closed_at,
            process=_process(catalog, r.product, r.process_version),
            need_recorded_at=r.recorded_at,
            need_kind=r.kind,
            campaign_id=r.campaign_id,
            checkpoints=tuple(checkpoints.get(r.id, ())),
            consents=tuple(consents.get(r.id, ())),
            prequalifications=tuple(prequalified.get(r.id, ())),
        )
        for r in rows
    ]


# ---------------------------------------------------------------- the report and the review


@dataclass(frozen=True)
class AuditItem:
    opportunity_id: str
    rule: str
    detail: str
    owner_id: str
    product: str
    opened_at: datetime

    @property
    def key(self) -> AuditKey:
        """Where the item stands in the report's order (a page ends at its last key)."""
        return (self.opened_at, self.opportunity_id, self.rule)


#: (opened_at, opportunity id, rule): the report's order, and a page's resume point.
AuditKey = tuple[datetime, str, str]


def _after(key: AuditKey) -> Any:
    """Findings strictly after `key` in the report's order (spelt out, not as a row-value
    comparison, so that each value binds with its column's type on every database)."""
    at, opp_id, rule = key
    f = AuditFinding
    return and_(
        f.opened_at >= at,
        or_(
            f.opened_at > at,
            f.opportunity_id > opp_id,
            and_(f.opportunity_id == opp_id, f.rule > rule),
        ),
    )


async def practice_audit(
    session: AsyncSession,
    catalog: ProcessCatalog,
    *,
    opened_from: date | None = None,
    opened_to: date | None = None,
    owner_id: str | None = None,
    product: str | None = None,
    after: AuditKey | None = None,
    limit: int | None = None,
) -> list[AuditItem]:
    """One item per opportunity and rule it breaks, for the opportunities opened within the
    UTC days `opened_from`..`opened_to` (both included) of that owner and product, in the
    report's order: the first `limit` (all: None) of those after `after`.

    The verdicts kept in `audit_findings`, merged with those of the opportunities still
    marked stale, judged now (module docstring), all from one snapshot."""
    await _snapshot(session)
    # A stale opportunity's kept rows (if bulk SQL or a migration marked it stale) are out
    # of date: its findings are the ones judged now.
    judged_stale = select(Opportunity.id).where(Opportunity.id == AuditFinding.opportunity_id, Opportunity.audit_stale)
    kept = select(AuditFinding).where(*between(AuditFinding.opened_at, opened_from, opened_to), ~judged_stale.exists())
    stale = [Opportunity.audit_stale, *between(Opportunity.opened_at, opened_from, opened_to)]
    if owner_id is not None:
        kept = kept.where(AuditFinding.owner_id == owner_id)
        stale.append(Opportunity.owner_id == owner_id)
    if product is not None:
        kept = kept.where(AuditFinding.product == product)
        stale.append(Opportunity.product == product)
    if after is not None:
        kept = kept.where(_after(after))
    kept = kept.order_by(AuditFinding.opened_at, AuditFinding.opportunity_id, AuditFinding.rule)
    if limit is not None:
        kept = kept.limit(limit)
    items = [
        AuditItem(f.opportunity_id, f.rule, f.detail, f.owner_id, f.product, f.opened_at)
        for f in await session.scalars(kept)
    ]
    judged_now = [
        AuditItem(o.id, f.rule, f.detail, o.owner_id, o.product, o.opened_at)
        for o in await load_facts(session, catalog, stale)
        for f in findings(o)
    ]
    if judged_now:
        items = sorted(items + [i for i in judged_now if after is None or i.key > after], key=lambda i: i.key)[:limit]
    return items


async def customer_review(session: AsyncSession, catalog: ProcessCatalog, customer_id: str) -> list[Review]:
    """Kevin's three questions and the audit's exceptions, per opportunity of the customer
    (opened_at order)."""
    return [review(o) for o in await load_facts(session, catalog, [Opportunity.customer_id == customer_id])]
