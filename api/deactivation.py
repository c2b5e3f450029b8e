"""Deactivating an employee (`PATCH /v1/employees/{id}` with `active: false`): they left the
bank, so nothing of theirs may wait on them.

In this order:
1. they are marked inactive and their API keys revoked, in the PATCH's own transaction
   (api/routers/employees.py): from that commit on their keys answer 401, they act on
   nothing (api/actors.py) and routing never picks them (activities/referral.py);
2. each of their open referrals (assigned or accepted) is released through its workflow's
   `release` update: re-routed as a rejection is, never back to them;
3. each of their open opportunities goes to their manager through its workflow's
   `transfer_owner` update, which records the numbered owner change. Without an active
   manager the opportunities stay theirs, and the answer and the e-mail say so;
4. their manager (without one, the managers of their territory) is told by e-mail what
   was moved and what was not: the message is recorded in the outbox (never sent from
   here: an SMTP outage delays it, not the PATCH) and the e-mail sender delivers it.

Where it runs: here, in the API request, which already speaks to the workflows through
`svc.client`, rather than in a workflow of its own. The steps are few and short, the
PATCH answers with what they did, and every step is safe to repeat, so a request that
fails half-way is finished by sending the same PATCH again:
- step 1 changes only what is not changed yet (a key revoked stays revoked at its time);
- steps 2 and 3 act on what is still open and still theirs, read from the store at each
  run; their update ids are derived from the referral's last recorded change and from
  the opportunity's next owner-change number (domain/ids.py), so a repeat that meets an
  update still in flight joins it instead of making a second one, and a refusal (409:
  the work moved on meanwhile) is skipped, not an error;
- step 4 lists what the store records of the deactivation (released referral history
  entries, owner change rows, the opportunities kept), so a repeat that finishes an
  earlier attempt reports everything, and its message id is derived from that list: the
  same list is the same message, sent once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.mail import Mailer
from api.deps import Principal, Services
from api.errors import ApiError
from api.schemas import DeactivationOut
from api.workflows import run_update, update_opportunity
from domain.ids import owner_change_update_id, referral_workflow_id, release_update_id
from domain.opportunity import OpportunityAnswer, TransferOwnerCommand
from domain.referral import WORKING_STATUSES, ReferralAnswer, ReleaseCommand
from store.models import Employee, Opportunity, OwnerChange, Referral, ReferralHistory
from store.queries import territory_managers
from workflows.mail import mail_wake
from workflows.opportunity import OpportunityWorkflow
from workflows.referral import ReferralWorkflow

#: The reason recorded on every release and owner change a deactivation makes: what the
#: e-mail finds them by.
REASON = "assignee deactivated"
OWNER_REASON = "owner deactivated"


async def deactivate(svc: Services, employee: Employee, who: Principal, keys_revoked: int) -> DeactivationOut:
    """Steps 2 to 4 for an employee already marked inactive (step 1 is the caller's)."""
    actor, via = who.employee_id or who.name, who.name
    released, left = await _release_referrals(svc, employee.id, actor, via)
    async with svc.sessions() as session:
        manager = await session.get(Employee, employee.manager_id) if employee.manager_id else None
    heir = manager if manager is not None and manager.active else None
    transferred = await _transfer_opportunities(svc, employee.id, heir.id, actor, via) if heir else []
    async with svc.sessions.begin() as session:
        kept = await _open_opportunities(session, employee.id)
        recipients = [heir] if heir else await territory_managers(session, employee.states)
        subject, body, digest = await _notice(session, employee, heir, kept, actor, via)
        # Recorded only: the sender delivers it, so an SMTP outage never holds up the PATCH.
        await _mailer(svc).record_for(
            session, f"employee-deactivated:{employee.id}:{digest}", recipients, subject, body
        )
    return DeactivationOut(
        keys_revoked=keys_revoked,
        referrals_released=released,
        referrals_left=left,
        transferred_to=heir.id if heir else None,
        opportunities_transferred=transferred,
        opportunities_kept=kept,
        notified=[m.id for m in recipients],
        note=_summary(employee, heir, len(kept), left),
    )


async def _applied(update: Awaitable[Any]) -> bool:
    """Await one update; False when the workflow refused it (409: the referral or
    opportunity moved on since it was read), which leaves nothing to do."""
    try:
        await update
    except ApiError as exc:
        if exc.status != 409:
            raise
        return False
    return True


async def _working_referrals(session: AsyncSession, employee_id: str) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(Referral.id, Referral.last_seq)
        .where(Referral.assignee_id == employee_id, Referral.status.in_(WORKING_STATUSES))
        .order_by(Referral.created_at, Referral.id)
    )
    return [(referral_id, seq) for referral_id, seq in rows]


async def _release_referrals(svc: Services, employee_id: str, actor: str, via: str) -> tuple[list[str], list[str]]:
    """Step 2: returns the referrals released now, and those still theirs after it."""
    async with svc.sessions() as session:
        working = await _working_referrals(session, employee_id)
    released = []
    for referral_id, seq in working:
        cmd = ReleaseCommand(employee_id=employee_id, actor=actor, via=via, reason=REASON)
        if await _applied(
            run_update(
                svc,
                referral_workflow_id(referral_id),
                ReferralWorkflow.release,
                cmd,
                update_id=release_update_id(referral_id, employee_id, seq),
                result_type=ReferralAnswer,
                closed_message="this referral is converted or closed",
            )
        ):
            released.append(referral_id)
    async with svc.sessions() as session:
        left = [referral_id for referral_id, _ in await _working_referrals(session, employee_id)]
    return released, left


async def _open_opportunities(session: AsyncSession, owner_id: str) -> list[str]:
    return list(
        await session.scalars(
            select(Opportunity.id)
            .where(Opportunity.owner_id == owner_id, Opportunity.status == "open")
            .order_by(Opportunity.opened_at, Opportunity.id)
        )
    )


async def _transfer_opportunities(svc: Services, employee_id: str, to: str, actor: str, via: str) -> list[str]:
    """Step 3: returns the opportunities given to `to` now."""
    async with svc.sessions() as session:
        numbered = [
            (opportunity_id, changes + 1)
            for opportunity_id, changes in await session.execute(
                select(Opportunity.id, func.count(OwnerChange.id))
                .outerjoin(OwnerChange, OwnerChange.opportunity_id == Opportunity.id)
                .where(Opportunity.owner_id == employee_id, Opportunity.status == "open")
                .group_by(Opportunity.id, Opportunity.opened_at)
                .order_by(Opportunity.opened_at, Opportunity.id)
            )
        ]
    transferred = []
    for opportunity_id, seq in numbered:
        cmd = TransferOwnerCommand(to_owner_id=to, actor=actor, via=via, reason=OWNER_REASON)
        if await _applied(
            update_opportunity(
                svc,
                opportunity_id,
                OpportunityWorkflow.transfer_owner,
                cmd,
                update_id=owner_change_update_id(opportunity_id, seq),
                result_type=OpportunityAnswer,
            )
        ):
            transferred.append(opportunity_id)
    return transferred


# ---------------------------------------------------------------- step 4: the e-mail


def _mailer(svc: Services) -> Mailer:
    """Records in the outbox and wakes this task queue's sender (workflows/mail.py)."""
    return Mailer(mail_wake(svc.client, svc.starts.task_queue, svc.settings.smtp_url))


async def _notice(
    session: AsyncSession, employee: Employee, heir: Employee | None, kept: list[str], actor: str, via: str
) -> tuple[str, str, str]:
    """The e-mail's subject and body, from what the store records of the deactivation,
    and the digest of what it lists (the message id's last part)."""
    moved = list(
        await session.execute(
            select(OwnerChange.opportunity_id, OwnerChange.to_owner_id, OwnerChange.at, OwnerChange.seq)
            .where(OwnerChange.from_owner_id == employee.id, OwnerChange.reason == OWNER_REASON)
            .order_by(OwnerChange.at, OwnerChange.opportunity_id)
        )
    )
    released = list(
        await session.execute(
            select(ReferralHistory.referral_id, ReferralHistory.at, ReferralHistory.seq, Referral.assignee_id)
            .join(Referral, Referral.id == ReferralHistory.referral_id)
            .where(
                ReferralHistory.assignee_id == employee.id,
                ReferralHistory.status == "released",
                ReferralHistory.note == REASON,
            )
            .order_by(ReferralHistory.at, ReferralHistory.referral_id)
        )
    )
    listed = [f"o:{o}:{seq}" for o, _, _, seq in moved] + [f"r:{r}:{seq}" for r, _, seq, _ in released]
    listed += [f"k:{o}" for o in kept]
    digest = hashlib.sha256("\n".join(listed).encode()).hexdigest()[:16]

    def when(at: datetime) -> str:
        return f"{at:%Y-%m-%d %H:%M} UTC"

    who = f"{employee.name} ({employee.id})"
    lines = [f"{who} was deactivated by {actor} (via {via}): their API keys are revoked and no referral goes to them."]
    if heir is None:
        lines.append("They have no active manager, so their open opportunities stay theirs until someone takes them.")
    lines.append("")
    if heir is not None or moved:
        lines.append(f"Open opportunities given to their manager ({len(moved)}):")
        lines += [f"  {o}  now owned by {to}  ({when(at)})" for o, to, at, _ in moved] or ["  none"]
    lines.append(f"Open referrals re-routed ({len(released)}):")
    lines += [
        f"  {r}  now {'with ' + now if now else 'waiting in a queue'}  ({when(at)})" for r, at, _, now in released
    ] or ["  none"]
    if kept:
        lines.append(f"Open opportunities still theirs, without an owner who can act ({len(kept)}):")
        lines += [f"  {o}" for o in kept]
    subject = f"Employee deactivated: {who}" + (f"; open opportunities without an owner: {len(kept)}" if kept else "")
    return subject, "\n".join(lines) + "\n", digest


def _summary(employee: Employee, heir: Employee | None, kept: int, left: list[str]) -> str:
    parts = [f"{employee.id} is inactive and their keys are revoked."]
    if heir is not None:
        parts.append(f"Their open opportunities belong to their manager {heir.id}.")
    elif kept:
        parts.append(
            f"They have no active manager, so their open opportunities ({kept}) stay theirs: give them an owner."
        )
    else:
        parts.append("They have no active manager, and no open opportunities.")
    if left:
        parts.append(f"{len(left)} referrals were in the middle of a move: send the same PATCH again.")
    return " ".join(parts)
