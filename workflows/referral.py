"""ReferralWorkflow: one referral, from creation to converted or closed.

Workflow id `referral-<id>`. Its input carries the routing rules and SLAs in force when
it was created; it keeps them for its whole life.

On start it records and scores the referral, routes it (least-loaded eligible recipient,
or the fallback queue) and e-mails the recipient (or the managers); the `created` update
answers once that is done. Then it waits for, as Updates with validators:
- `accept`, `reject` (with a reason: re-routed, never back to anyone who rejected),
  `reassign`, `convert` (opens the opportunity), `close` (with a reason);
- `release`: an operator takes the referral away from a deactivated assignee; re-routed
  as a rejection is, never back to them;
and on durable timers:
- the acceptance SLA while assigned: on expiry the referral is re-routed away from the
  lapsed assignee and their manager (or every manager) is told, once per lapse;
- the follow-up SLA after acceptance: a reminder to the assignee, then, after a second
  period, an escalation to the manager.
The run ends when the referral is converted or closed and every handler has finished.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain import records
    from domain.ids import referral_opportunity_id
    from domain.opportunity import OpportunityInput
    from domain.referral import (
        AcceptCommand,
        CloseCommand,
        ConvertCommand,
        HistoryEntry,
        ReassignCommand,
        ReferralAnswer,
        ReferralInput,
        ReferralState,
        RejectCommand,
        ReleaseCommand,
        Routed,
        acceptance_deadline,
        check_accept,
        check_close,
        check_convert,
        check_reassign,
        check_reject,
        check_release,
        followup_deadline,
        next_sla,
    )
    from domain.scoring import Factor
    from observability import workflow_metrics
    from workflows import SA_ASSIGNEE_ID, SA_EXPRESSED_INTEREST, SA_REFERRAL_STATUS
    from workflows.attention import Attention, Repairable
    from workflows.common import Console, takes_patch, validate
    from workflows.timers import RearmableTimer

SYSTEM = "needflow"

#: Since this patch a notice that a write causes (assigned, unassigned, lapsed: a routing
#: or a hand-on) is recorded by that write's activity alone. Those activities have recorded
#: them in their own transaction for a while, and the workflow's `referral.notify` after
#: each found them there: an activity round trip (six history events, a workflow task) for
#: nothing, on every create and every re-routing. Reminders and escalations, which no
#: write causes, still go through `referral.notify`.
NOTICES_WITH_THEIR_WRITE = "notices-with-their-write"

#: The history format a run started now records; its input carries it (`history_format`,
#: set by workflows/starts.py). Since format 1 a run leaves notices to their write by its
#: input, without asking NOTICES_WITH_THEIR_WRITE (a marker and Temporal's
#: `TemporalChangeVersion` upsert: two history events and a visibility write per
#: referral). A run whose input holds 0 asks, as it did (tests/histories/v3-*).
HISTORY_FORMAT = 1


@workflow.defn
class ReferralWorkflow(Repairable):
    @workflow.init
    def __init__(self, input: ReferralInput) -> None:
        self.input = input
        self.state = ReferralState(referral_id=input.referral_id, status="routing", customer_id=input.customer_id)
        self._ready = False
        self._sla = RearmableTimer()  # re-armed by every status change
        self._console = Console(input.search_attributes)
        #: Recording activities that failed for good wait here for ops (workflows/attention.py).
        self.attention = Attention(self._console)
        self._accepted_at: datetime | None = None
        self._followups_sent = 0
        self._write_lock = asyncio.Lock()
        self._notices_with_write: bool | None = None

    def _written_notices(self) -> bool:
        """Whether this run leaves write-caused notices to their write (NOTICES_WITH_THEIR_WRITE),
        asked once, at the run's first routing: a run keeps the answer it got then."""
        if self._notices_with_write is None:
            self._notices_with_write = takes_patch(self.input.history_format, NOTICES_WITH_THEIR_WRITE)
        return self._notices_with_write

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralState:
        async with self._write_lock:
            created = self._entry("created", input.referrer.id, None, via=input.created_via)
            route = self._route_request(SYSTEM, None, via=None)
            opened: records.ReferralOpened = await self.attention.record(
                records.OPEN_REFERRAL,
                records.OpenReferral(
                    input=input, workflow_id=workflow.info().workflow_id, created=created, route=route
                ),
                records.ReferralOpened,
            )
            self.state.lead_score = opened.lead_score
            self.state.lead_score_factors = [Factor.model_validate(f) for f in opened.lead_score_factors]
            self.state.referrer_score = opened.referrer_score
            await self._routed(route, opened.routed)
        self._ready = True
        while self.state.status not in ("converted", "closed"):
            await self._watch_slas()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    # ------------------------------------------------------------ query and updates

    @workflow.query
    def current_state(self) -> ReferralState:
        return self.state

    @workflow.update
    async def created(self) -> ReferralAnswer:
        await workflow.wait_condition(lambda: self._ready)
        return self._answer()

    @workflow.update
    async def accept(self, cmd: AcceptCommand) -> ReferralAnswer:
        self._accepted_at = workflow.now()
        self._followups_sent = 0
        self.state.sla_deadline = followup_deadline(self._accepted_at, self.input.sla, 0)
        entry = self._change("accepted", cmd.actor.id, None, self.state.assignee_id, via=cmd.actor.via)
        await self._record(entry, accepted_at=self._accepted_at)
        return self._answer()

    @accept.validator
    def _validate_accept(self, cmd: AcceptCommand) -> None:
        validate(check_accept, self.state, cmd)

    @workflow.update
    async def reject(self, cmd: RejectCommand) -> ReferralAnswer:
        rejected_by = self.state.assignee_id
        if rejected_by and rejected_by not in self.state.excluded:
            self.state.excluded.append(rejected_by)
        entry = self._change(
            "routing", cmd.actor.id, f"rejected: {cmd.reason}", rejected_by, record_status="rejected", via=cmd.actor.via
        )
        async with self._write_lock:
            await self._route(cmd.actor.id, preceding=entry, via=cmd.actor.via)
        return self._answer()

    @reject.validator
    def _validate_reject(self, cmd: RejectCommand) -> None:
        validate(check_reject, self.state, cmd)

    @workflow.update
    async def reassign(self, cmd: ReassignCommand) -> ReferralAnswer:
        deadline = acceptance_deadline(workflow.now(), self.input.sla)
        self.state.queue = None
        self.state.sla_deadline = deadline
        self.state.assignee_id = cmd.to_employee_id
        entry = self._change(
            "assigned", cmd.actor.id, cmd.reason or "reassigned", cmd.to_employee_id, via=cmd.actor.via
        )
        await self._record(entry)
        if not self._written_notices():  # else record_change told the new assignee
            await self._notify("assigned", str(entry.seq), cmd.to_employee_id)
        return self._answer()

    @reassign.validator
    def _validate_reassign(self, cmd: ReassignCommand) -> None:
        validate(check_reassign, self.state, cmd)

    @workflow.update
    async def convert(self, cmd: ConvertCommand) -> ReferralAnswer:
        assert cmd.process is not None
        self.state.status = "converting"  # refuses other commands until it is done
        self._sla.rearm()
        self._publish()
        at = workflow.now()
        async with self._write_lock:
            conversion: records.Conversion = await self.attention.record(
                records.PREPARE_CONVERSION,
                records.PrepareConversion(
                    referral_id=self.input.referral_id,
                    need_kind=cmd.need.kind,
                    need_description=cmd.need.description,
                    recorded_by=cmd.actor.id,
                    at=at,
                ),
                records.Conversion,
            )
            opportunity_id = referral_opportunity_id(self.input.referral_id)
            owner = self.state.assignee_id or cmd.actor.id
            await self.attention.record(
                records.START_OPPORTUNITY,
                OpportunityInput(
                    opportunity_id=opportunity_id,
                    customer_id=conversion.customer_id,
                    owner_id=owner,
                    need_id=conversion.need_id,
                    product=self.input.expressed_interest,
                    amount=cmd.amount if cmd.amount is not None else self.input.value,
                    referral_id=self.input.referral_id,
                    opened_by=cmd.actor.id,
                    opened_via=cmd.actor.via,
                    process=cmd.process,
                ),
            )
            self.state.customer_id = conversion.customer_id
            self.state.opportunity_id = opportunity_id
            done = self._change(
                "converted", cmd.actor.id, f"opportunity {opportunity_id}", self.state.assignee_id, via=cmd.actor.via
            )
            self.state.sla_deadline = None
            await self._record_locked(done, opportunity_id=opportunity_id, customer_id=conversion.customer_id, won=True)
        return self._answer()

    @convert.validator
    def _validate_convert(self, cmd: ConvertCommand) -> None:
        validate(check_convert, self.state, cmd, self.input.expressed_interest, self.input.value)

    @workflow.update
    async def close(self, cmd: CloseCommand) -> ReferralAnswer:
        self.state.sla_deadline = None
        entry = self._change("closed", cmd.actor.id, cmd.reason, self.state.assignee_id, via=cmd.actor.via)
        await self._record(entry, close_reason=cmd.reason, won=False)
        return self._answer()

    @close.validator
    def _validate_close(self, cmd: CloseCommand) -> None:
        validate(check_close, self.state, cmd)

    @workflow.update
    async def release(self, cmd: ReleaseCommand) -> ReferralAnswer:
        """The assignee can no longer work the referral (deactivated): re-route it as a
        rejection does, excluding them, so it never comes back to them."""
        released = self.state.assignee_id
        if released and released not in self.state.excluded:
            self.state.excluded.append(released)
        entry = self._change("routing", cmd.actor, cmd.reason, released, record_status="released", via=cmd.via)
        async with self._write_lock:
            await self._route(cmd.actor, preceding=entry, via=cmd.via)
        return self._answer()

    @release.validator
    def _validate_release(self, cmd: ReleaseCommand) -> None:
        validate(check_release, self.state, cmd)

    # ------------------------------------------------------------ SLAs

    async def _watch_slas(self) -> None:
        """Wait for the SLA running now (`domain.referral.next_sla`) to fall due, and act on
        it; return early when the status changes, so the caller waits on the new one."""
        due = next_sla(self.state, self.input.sla, self._accepted_at, self._followups_sent)
        if not await self._sla.wait(due.at if due else None):
            return
        assert due is not None
        workflow_metrics.sla_breached(due.kind, self.input.expressed_interest.value)
        if due.kind == "lapse":
            await self._lapse()
        else:
            await self._follow_up(due.kind)

    async def _lapse(self) -> None:
        lapsed = self.state.assignee_id
        if lapsed and lapsed not in self.state.excluded:
            self.state.excluded.append(lapsed)
        entry = self._change("routing", SYSTEM, "acceptance SLA lapsed", lapsed, record_status="lapsed", via=None)
        async with self._write_lock:
            await self._route(SYSTEM, preceding=entry, via=None)
            if not self._written_notices():  # else the routing told the lapsed one's manager
                await self._notify_locked("lapsed", str(entry.seq), lapsed)

    async def _follow_up(self, kind: str) -> None:
        """The follow-up SLA fell due: a reminder to the assignee, then an escalation."""
        self._followups_sent += 1
        after = next_sla(self.state, self.input.sla, self._accepted_at, self._followups_sent)
        self.state.sla_deadline = after.at if after else None  # the escalation's, then none
        self._publish()
        await self._notify(kind, f"{self.state.history[-1].seq}-{self._followups_sent}", self.state.assignee_id)

    # ------------------------------------------------------------ state changes

    def _entry(
        self, status: str, actor: str, note: str | None, assignee_id: str | None = None, *, via: str | None
    ) -> HistoryEntry:
        entry = HistoryEntry(
            seq=len(self.state.history) + 1,
            status=status,
            at=workflow.now(),
            actor=actor,
            via=via,
            note=note,
            assignee_id=assignee_id,
        )
        self.state.history.append(entry)
        return entry

    def _change(
        self,
        status: str,
        actor: str,
        note: str | None,
        assignee_id: str | None,
        record_status: str | None = None,
        *,
        via: str | None,
    ) -> HistoryEntry:
        """Change the status now (the next validator sees it) and add its history entry."""
        self.state.status = status  # type: ignore[assignment]
        self._sla.rearm()
        entry = self._entry(record_status or status, actor, note, assignee_id, via=via)
        self._publish()
        return entry

    def _route_request(self, actor: str, preceding: HistoryEntry | None, *, via: str | None) -> records.RouteReferral:
        self.state.status = "routing"
        now = workflow.now()
        return records.RouteReferral(
            referral_id=self.input.referral_id,
            preceding=preceding,
            rules=self.input.rules,
            facts=self.input.facts(),
            exclude=list(self.state.excluded),
            seq=len(self.state.history) + 1,
            at=now,
            actor=actor,
            via=via,
            accept_deadline=acceptance_deadline(now, self.input.sla),
        )

    async def _route(self, actor: str, preceding: HistoryEntry | None = None, *, via: str | None) -> None:
        """Re-route the referral and tell whoever must know. Holds the write lock."""
        req = self._route_request(actor, preceding, via=via)
        await self._routed(req, await self.attention.record(records.ROUTE_REFERRAL, req, Routed))

    async def _routed(self, req: records.RouteReferral, routed: Routed) -> None:
        d = routed.decision
        status = "assigned" if d.assignee_id else "unassigned"
        self.state.assignee_id = d.assignee_id
        self.state.queue = d.queue
        self.state.sla_deadline = req.accept_deadline if d.assignee_id else None
        self.state.history.append(
            HistoryEntry(
                seq=req.seq,
                status=status,
                at=req.at,
                actor=req.actor,
                via=req.via,
                note=d.reason,
                assignee_id=d.assignee_id,
            )
        )
        self.state.status = status  # type: ignore[assignment]
        self._sla.rearm()
        self._publish()
        if self._written_notices():
            return  # the routing activity recorded the notice in its own transaction
        if d.assignee_id:
            await self._notify_locked("assigned", str(req.seq), d.assignee_id)
        else:
            await self._notify_locked("unassigned", str(req.seq), None, note=d.reason)

    async def _record(self, entry: HistoryEntry, **extra) -> None:  # noqa: ANN003
        await workflow.wait_condition(lambda: self._ready)
        async with self._write_lock:
            await self._record_locked(entry, **extra)

    async def _record_locked(self, entry: HistoryEntry, **extra) -> None:  # noqa: ANN003
        s = self.state
        await self.attention.record(
            records.RECORD_REFERRAL_CHANGE,
            records.ReferralChange(
                referral_id=s.referral_id,
                entry=entry,
                status=s.status,
                assignee_id=s.assignee_id,
                queue=s.queue,
                sla_deadline=s.sla_deadline,
                **extra,
            ),
        )

    async def _notify(self, kind: str, occasion: str, employee_id: str | None, note: str | None = None) -> None:
        await workflow.wait_condition(lambda: self._ready)
        async with self._write_lock:
            await self._notify_locked(kind, occasion, employee_id, note)

    async def _notify_locked(self, kind: str, occasion: str, employee_id: str | None, note: str | None = None) -> None:
        await self.attention.record(
            records.NOTIFY_REFERRAL,
            records.ReferralNotice(
                referral_id=self.input.referral_id, kind=kind, occasion=occasion, employee_id=employee_id, note=note
            ),
        )

    def _answer(self) -> ReferralAnswer:
        s = self.state
        return ReferralAnswer(
            referral_id=s.referral_id, status=s.status, assignee_id=s.assignee_id, opportunity_id=s.opportunity_id
        )

    def _publish(self) -> None:
        """Search attributes and current details: where the Web UI shows this referral."""
        s = self.state
        who = f"`{s.assignee_id}`" if s.assignee_id else f"queue `{s.queue}`" if s.queue else "nobody yet"
        lines = [f"**{s.status}** · {self.input.expressed_interest.value} · {who}"]
        if s.sla_deadline is not None:
            what = "accept by" if s.status == "assigned" else "follow up by"
            lines.append(f"SLA: {what} {s.sla_deadline:%Y-%m-%d %H:%M:%S} UTC")
        if s.lead_score is not None:
            lines.append(f"lead score {s.lead_score}/99 · referrer score {s.referrer_score}/100")
        if s.opportunity_id:
            lines.append(f"opportunity `{s.opportunity_id}`")
        attributes = [
            SA_REFERRAL_STATUS.value_set(s.status),
            SA_ASSIGNEE_ID.value_set(s.assignee_id or ""),
            SA_EXPRESSED_INTEREST.value_set(self.input.expressed_interest.value),
        ]
        self._console.publish(attributes, "\n\n".join(lines))
