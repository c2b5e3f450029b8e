"""OpportunityWorkflow: one sales opportunity, from its first stage to won or lost.

Workflow id `opportunity-<id>`. It receives its product's process (a versioned
definition) in its input and keeps it for its whole life.

What it waits for, as Updates (each with a validator that refuses what the process
forbids, so a refused command leaves no trace in history):
- `opened`: answers once the opportunity and its first checkpoint are recorded;
- `advance`: a person's move into the next, manually entered stage, with evidence;
- `apply_event`: a backend event (application submitted/approved/declined, SMS
  authorisation, account opened); the same event id twice is a `duplicate`;
- `signature_outcome`: the e-signature provider's word on an envelope (completed,
  declined, voided); completion enters the signature stage and records the consent;
- `resend_signature`: a new envelope after a decline or void;
- `close_lost`: closes from any open stage, with a reason;
- `transfer_owner`: gives the open opportunity to another owner (its owner was
  deactivated), recorded as a numbered owner change.

Every stage change is recorded (checkpoint, and consent where the stage records one)
by an activity before the update answers, so a caller reads it back at once. The run
ends when the opportunity is won or lost and every handler has finished.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain import records
    from domain.ids import consent_id
    from domain.opportunity import (
        CLOSED_LOST_STAGE,
        AdvanceCommand,
        CheckpointView,
        CloseLostCommand,
        EventCommand,
        EventResult,
        OpportunityAnswer,
        OpportunityInput,
        OpportunityState,
        ResendSignatureCommand,
        SignatureOutcome,
        SignatureState,
        TransferOwnerCommand,
        TransitionRefused,
        check_advance,
        check_close_lost,
        check_event,
        check_resend,
        check_signature_outcome,
        check_transfer,
        consent_evidence,
        event_body_sha256,
        has_blank_text,
    )
    from domain.process import Stage
    from domain.types import ConsentChannel, OpportunityStatus, Trigger
    from observability import workflow_metrics
    from workflows import SA_CUSTOMER_ID, SA_OPPORTUNITY_STATUS, SA_OWNER_ID, SA_PRODUCT, SA_STAGE
    from workflows.attention import Attention, Repairable
    from workflows.common import Console, record, takes_patch, validate
    from workflows.timers import RearmableTimer


#: Since this patch a workflow upserts only the search attributes that change and
#: requests a stage's signature in the stage change's own activity: a mortgage takes ~10
#: fewer history events and one activity round trip less when its documents go out.
#: Released first as "lean-history" (181c976, stop 12), then renamed for fear of a clash
#: with the local-activity design of 722eb93..eb93f57, which used that id but was never
#: released. The behaviour is the same under both ids, and runs started under either may
#: still be running: a run is lean if it recorded either marker, and a new run records
#: LEAN_HISTORY alone (tests/histories/v2-*: the first id's runs).
LEAN_HISTORY = "lean-history-2"
LEAN_HISTORY_FIRST_ID = "lean-history"

#: The history format a run started now records; its input carries it (`history_format`,
#: set by workflows/starts.py). Since format 1 a run is lean by its input, without asking
#: LEAN_HISTORY: asking records a marker and Temporal's own `TemporalChangeVersion`
#: search attribute upsert, two history events and a visibility write per opportunity,
#: for a question whose answer a new run knows at its start. A run whose input holds 0
#: (started before) asks the markers, as it did (tests/histories/v3-*: LEAN_HISTORY's runs).
HISTORY_FORMAT = 1


@workflow.defn
class OpportunityWorkflow(Repairable):
    @workflow.init
    def __init__(self, input: OpportunityInput) -> None:
        self.input = input
        self.process = input.process
        first = self.process.stages[0]
        self.state = OpportunityState(
            opportunity_id=input.opportunity_id,
            customer_id=input.customer_id,
            product=input.product,
            process_version=self.process.version,
            owner_id=input.owner_id,
            amount=input.amount,
            stage=first.key,
            probability=first.probability,
        )
        if input.imported is not None:  # an imported opportunity resumes where it was
            resumed = self.process.stage(input.imported.checkpoints[-1].stage)
            self.state.checkpoints = list(input.imported.checkpoints)
            self.state.stage, self.state.probability = resumed.key, resumed.probability
        self._opened = False
        #: Remote envelopes are watched by a task each; a Connect message re-arms the timer.
        self._envelope_timer = RearmableTimer()
        self._envelope_prompted = False
        self._watchers: list[asyncio.Task[None]] = []
        #: When the current signature request was sent (its round trip's metric).
        self._signature_sent_at: datetime | None = None
        self._console = Console(input.search_attributes)
        self._lean: bool | None = None
        #: Recording activities that failed for good wait here for ops (workflows/attention.py).
        self.attention = Attention(self._console)
        # Persisting in the order the state changed: an asyncio.Lock is FIFO.
        self._write_lock = asyncio.Lock()

    def _blank_evidence_is_missing(self, supplied: dict[str, Any]) -> bool:
        """Blank evidence ("   ") counts as missing since this patch. Handlers re-run the
        rule their validator ran (validators do not run on replay, handlers do): a workflow
        that entered a stage with blank evidence before the patch must replay as it ran.
        See README, "Changing workflow code".

        A lean run asks only when `supplied` holds blank text, the one case where the old
        rule and the new differ: asking writes a marker and a search attribute upsert (two
        history events). Older runs asked at every stage change and must keep asking: the
        SDK fails a replay that meets a patch marker the code did not ask for."""
        if self._lean_history() and not has_blank_text(supplied):
            return True
        return workflow.patched("blank-evidence-is-missing")

    def _lean_history(self) -> bool:
        """Whether this run records the lean way (LEAN_HISTORY), asked once, before the
        first command: a run keeps the answer its first workflow task got."""
        if self._lean is None:
            # Stop 12's workers asked the first id, stop 14's the second; a new run asks none.
            self._lean = takes_patch(self.input.history_format, LEAN_HISTORY, LEAN_HISTORY_FIRST_ID)
            self._console.changes_only = self._lean
        return self._lean

    @workflow.run
    async def run(self, input: OpportunityInput) -> OpportunityState:
        self._lean_history()
        first = self.process.stages[0]
        if input.imported is None:
            checkpoint = self._append_checkpoint(
                first, Trigger.manual, input.opened_by, {"need_id": input.need_id}, via=input.opened_via
            )
        else:  # its checkpoints are recorded already: none is written again
            checkpoint = input.imported.checkpoints[0]
        self._publish()
        async with self._write_lock:
            await self.attention.record(
                records.OPEN_OPPORTUNITY,
                records.OpenOpportunity(
                    opportunity_id=input.opportunity_id,
                    workflow_id=workflow.info().workflow_id,
                    customer_id=input.customer_id,
                    owner_id=input.owner_id,
                    need_id=input.need_id,
                    product=input.product,
                    process_version=self.process.version,
                    amount=input.amount,
                    referral_id=input.referral_id,
                    campaign_id=input.campaign_id,
                    probability=self.state.probability,
                    first_checkpoint=checkpoint,
                    imported=input.imported,
                ),
            )
        self._opened = True
        if input.imported is not None:
            resumed = self.process.stage(self.state.stage)
            if resumed.request_signature is not None:
                # The old system's signature request did not come with the book: send ours.
                self._start_signature_request()
                async with self._write_lock:
                    await self._request_signature(resumed)
        await workflow.wait_condition(
            lambda: (
                self.state.status != OpportunityStatus.open
                and workflow.all_handlers_finished()
                and all(w.done() for w in self._watchers)
            )
        )
        return self.state

    # ------------------------------------------------------------ queries and updates

    @workflow.query
    def current_state(self) -> OpportunityState:
        return self.state

    @workflow.update
    async def opened(self) -> OpportunityAnswer:
        await workflow.wait_condition(lambda: self._opened)
        return self._answer()

    @workflow.update
    async def advance(self, cmd: AdvanceCommand) -> OpportunityAnswer:
        stage = check_advance(
            self.process, self.state, cmd, blank_is_missing=self._blank_evidence_is_missing(cmd.evidence)
        )
        await self._enter(stage, Trigger.manual, cmd.actor.id, dict(cmd.evidence), via=cmd.actor.via)
        return self._answer()

    @advance.validator
    def _validate_advance(self, cmd: AdvanceCommand) -> None:
        validate(check_advance, self.process, self.state, cmd)

    @workflow.update
    async def apply_event(self, cmd: EventCommand) -> EventResult:
        if cmd.event_id in self.state.applied_events:
            # Already taken: wait until its write is done so the caller reads it back.
            async with self._write_lock:
                return EventResult(result="duplicate", opportunity=self._answer())
        effect, stage = check_event(
            self.process, self.state, cmd, blank_is_missing=self._blank_evidence_is_missing(cmd.data)
        )
        self.state.applied_events.append(cmd.event_id)
        processed = records.ProcessedEventRecord(
            event_id=cmd.event_id,
            type=cmd.type.value,
            body_sha256=event_body_sha256(cmd.type.value, cmd.data),
        )
        actor, via = cmd.source or cmd.type.value, cmd.source
        evidence = {"event_id": cmd.event_id, "occurred_at": cmd.occurred_at.isoformat(), **cmd.data}
        if effect == "lose":
            lost = self.process.lost_event(cmd.type)
            reason = str(cmd.data.get(lost.reason_field) if lost else "") or cmd.type.value
            await self._close_lost(reason, Trigger.event, actor, evidence, processed, via=via)
        else:
            assert stage is not None
            consent = None
            if stage.consent is not None:
                consent = self._consent(stage.consent, consent_evidence(stage.consent, cmd.data), actor, via)
            await self._enter(
                stage, Trigger.event, actor, evidence, via=via, consent=consent, processed_event=processed
            )
        return EventResult(result="applied", opportunity=self._answer())

    @apply_event.validator
    def _validate_event(self, cmd: EventCommand) -> None:
        if cmd.event_id in self.state.applied_events:
            return
        validate(check_event, self.process, self.state, cmd)

    @workflow.update
    async def signature_outcome(self, outcome: SignatureOutcome) -> OpportunityAnswer:
        """The local signing page's word: signed, declined, or the link expired."""
        await self._take_signature_outcome(outcome)
        return self._answer()

    @signature_outcome.validator
    def _validate_signature_outcome(self, outcome: SignatureOutcome) -> None:
        validate(check_signature_outcome, self.process, self.state, outcome)

    @workflow.signal
    def envelope_changed(self, envelope_id: str) -> None:
        """A remote provider's webhook (DocuSign Connect) says this envelope changed: look
        at it now rather than at the next poll. Only a prompt: what the provider's API
        then says is what counts, so a forged-looking, repeated or out-of-order message
        changes nothing by itself."""
        sig = self.state.signature
        if sig is not None and sig.envelope_id == envelope_id:
            self._envelope_prompted = True  # kept if the watcher is busy looking right now
            self._envelope_timer.rearm()

    async def _watch_envelope(self, envelope_id: str, poll_seconds: float, strays_possible: bool = True) -> None:
        """While a remote envelope is out for signature: look at it every `poll_seconds`
        (DocuSign: no more often than every 15 minutes) or when its webhook prompts, and
        take its outcome once it is finished. Stops when the request is no longer current."""

        def current() -> bool:
            sig = self.state.signature
            return sig is not None and sig.envelope_id == envelope_id and sig.status == "sent"

        while current() and self.state.status == OpportunityStatus.open:
            if not self._envelope_prompted:
                await self._envelope_timer.wait(workflow.now() + timedelta(seconds=poll_seconds))
            self._envelope_prompted = False  # a prompt from now on (even mid-look) means look again
            if not current() or self.state.status != OpportunityStatus.open:
                return
            try:
                look: records.SignatureLook = await record(
                    records.CHECK_SIGNATURE,
                    records.SignatureCheck(
                        opportunity_id=self.state.opportunity_id,
                        envelope_id=envelope_id,
                        sent_at=self._signature_sent_at,
                        strays_possible=strays_possible,
                    ),
                    records.SignatureLook,
                )
            except ActivityError:
                continue  # the provider refused or failed for good this time: look again later
            if look.outcome is not None and current():
                try:
                    await self._take_signature_outcome(look.outcome)
                except TransitionRefused:
                    continue  # e.g. signed, but the provider named no signer yet: look again

    async def _take_signature_outcome(self, outcome: SignatureOutcome) -> None:
        """Completed: enter the signature stage and record the consent with its evidence.
        Declined, voided or expired: stay in this stage, record why and tell the owner."""
        stage = check_signature_outcome(self.process, self.state, outcome)
        sig = self.state.signature
        assert sig is not None
        if stage is None:  # declined, voided or expired: stay in this stage and tell the owner
            sig.status = outcome.status
            self._publish()
            async with self._write_lock:
                await self.attention.record(
                    records.RECORD_SIGNATURE_FAILURE,
                    records.SignatureFailureRecord(
                        opportunity_id=self.state.opportunity_id,
                        envelope_id=outcome.envelope_id,
                        status=outcome.status,  # type: ignore[arg-type]
                        reason=outcome.reason,
                        owner_id=self.state.owner_id,
                    ),
                )
            return
        sig.status = "completed"
        if self._signature_sent_at is not None:
            workflow_metrics.signature_completed(
                self.state.product.value, sig.provider, self._signature_sent_at, outcome.at
            )
        evidence = {
            "provider": sig.provider,
            "envelope_id": outcome.envelope_id,
            "document_sha256": outcome.document_sha256,
            "signer_name": outcome.signer_name,
            "client_address": outcome.client_address,
            "signed_at": outcome.at.isoformat(),
        }
        if outcome.certificate_sha256 is not None:  # DocuSign's certificate of completion
            evidence["certificate_sha256"] = outcome.certificate_sha256
        signer = f"esignature:{sig.provider}"
        consent = self._consent(ConsentChannel.esignature, evidence, signer, None, granted_at=outcome.at)
        completion = records.SignatureCompletion(
            envelope_id=outcome.envelope_id,
            signer_name=outcome.signer_name or "",
            client_address=outcome.client_address,
            completed_at=outcome.at,
        )
        await self._enter(
            stage, Trigger.event, signer, evidence, via=None, consent=consent, signature_completion=completion
        )

    @workflow.update
    async def resend_signature(self, cmd: ResendSignatureCommand) -> OpportunityAnswer:
        check_resend(self.state, cmd)
        stage = self.process.stage(self.state.stage)
        self._start_signature_request()
        async with self._write_lock:
            await self._request_signature(stage)
        return self._answer()

    @resend_signature.validator
    def _validate_resend(self, cmd: ResendSignatureCommand) -> None:
        validate(check_resend, self.state, cmd)

    @workflow.update
    async def close_lost(self, cmd: CloseLostCommand) -> OpportunityAnswer:
        check_close_lost(self.state, cmd)
        await self._close_lost(
            cmd.reason, Trigger.manual, cmd.actor.id, {"reason": cmd.reason}, None, via=cmd.actor.via
        )
        return self._answer()

    @close_lost.validator
    def _validate_close_lost(self, cmd: CloseLostCommand) -> None:
        validate(check_close_lost, self.state, cmd)

    @workflow.update
    async def transfer_owner(self, cmd: TransferOwnerCommand) -> OpportunityAnswer:
        """A new owner: the search attribute moves at once, the owner change (numbered by
        this workflow) and the opportunity's owner are recorded before the update answers."""
        check_transfer(self.state, cmd)
        self.state.owner_changes += 1
        change = records.OwnerChangeRecord(
            opportunity_id=self.state.opportunity_id,
            seq=self.state.owner_changes,
            from_owner_id=self.state.owner_id,
            to_owner_id=cmd.to_owner_id,
            at=workflow.now(),
            actor=cmd.actor,
            via=cmd.via,
            reason=cmd.reason,
        )
        self.state.owner_id = cmd.to_owner_id
        self._publish()
        await workflow.wait_condition(lambda: self._opened)
        async with self._write_lock:
            await self.attention.record(records.RECORD_OWNER_CHANGE, change)
        return self._answer()

    @transfer_owner.validator
    def _validate_transfer_owner(self, cmd: TransferOwnerCommand) -> None:
        validate(check_transfer, self.state, cmd)

    # ------------------------------------------------------------ state changes
    # Each changes the in-memory state at once (so the next validator sees it), then
    # records it through an activity, in order, before the update answers.

    def _append_checkpoint(
        self, stage: Stage | None, trigger: Trigger, actor: str, evidence: dict, *, via: str | None
    ) -> CheckpointView:
        checkpoint = CheckpointView(
            seq=len(self.state.checkpoints) + 1,
            stage=stage.key if stage else CLOSED_LOST_STAGE,
            entered_at=workflow.now(),
            trigger=trigger,
            actor=actor,
            via=via,
            evidence=evidence,
        )
        self.state.checkpoints.append(checkpoint)
        workflow_metrics.stage_entered(self.state.product.value, checkpoint.stage, trigger.value)
        return checkpoint

    def _consent(
        self, channel: ConsentChannel, evidence: dict[str, Any], actor: str, via: str | None, granted_at: Any = None
    ) -> records.ConsentRecord:
        return records.ConsentRecord(
            consent_id=consent_id(self.state.opportunity_id, len(self.state.checkpoints) + 1),
            customer_id=self.state.customer_id,
            product=self.state.product,
            channel=channel,
            evidence=evidence,
            granted_at=granted_at or workflow.now(),
            actor=actor,
            via=via,
        )

    async def _enter(
        self,
        stage: Stage,
        trigger: Trigger,
        actor: str,
        evidence: dict[str, Any],
        *,
        via: str | None,
        consent: records.ConsentRecord | None = None,
        processed_event: records.ProcessedEventRecord | None = None,
        signature_completion: records.SignatureCompletion | None = None,
    ) -> None:
        checkpoint = self._append_checkpoint(stage, trigger, actor, evidence, via=via)
        self.state.stage = stage.key
        self.state.probability = stage.probability
        if stage.outcome == "won":
            self.state.status = OpportunityStatus.won
        if stage.request_signature is not None:
            self._start_signature_request()
        self._publish()
        await workflow.wait_condition(lambda: self._opened)
        async with self._write_lock:
            if stage.request_signature is not None and self._lean_history():
                # One activity records the stage and sends its documents, in that order.
                sent = await self._record(
                    checkpoint,
                    consent=consent,
                    processed_event=processed_event,
                    signature_completion=signature_completion,
                    signature_request=self._signature_request(stage),
                )
                if sent is None:  # an older worker (a rolling deploy) recorded the change only
                    await self._request_signature(stage)
                else:
                    self._signature_sent(sent)
                return
            await self._record(
                checkpoint, consent=consent, processed_event=processed_event, signature_completion=signature_completion
            )
            if stage.request_signature is not None:
                await self._request_signature(stage)

    async def _close_lost(
        self,
        reason: str,
        trigger: Trigger,
        actor: str,
        evidence: dict[str, Any],
        processed_event: records.ProcessedEventRecord | None,
        *,
        via: str | None,
    ) -> None:
        checkpoint = self._append_checkpoint(None, trigger, actor, evidence, via=via)
        self.state.stage = CLOSED_LOST_STAGE
        self.state.probability = 0
        self.state.status = OpportunityStatus.lost
        self.state.lost_reason = reason
        void = None
        if self.state.signature is not None and self.state.signature.status == "sent":
            void = self.state.signature.envelope_id  # its link dies with the opportunity
            self.state.signature.status = "voided"
            self._envelope_timer.rearm()  # a remote envelope's watcher stops now, not at its next poll
        self._publish()
        await workflow.wait_condition(lambda: self._opened)
        async with self._write_lock:
            await self._record(checkpoint, processed_event=processed_event, void_envelope_id=void)

    async def _record(self, checkpoint: CheckpointView, **extra: Any) -> Any:
        """Record a checkpoint and what changes with it (consent, event, signature); the
        envelope sent when the change asks for a signature (`signature_request`)."""
        return await self.attention.record(
            records.RECORD_STAGE_CHANGE,
            records.StageChange(
                opportunity_id=self.state.opportunity_id,
                checkpoint=checkpoint,
                probability=self.state.probability,
                status=self.state.status.value,
                lost_reason=self.state.lost_reason,
                **extra,
            ),
            records.SignatureSent if extra.get("signature_request") is not None else None,
        )

    def _start_signature_request(self) -> None:
        number = (self.state.signature.request_no if self.state.signature else 0) + 1
        self.state.signature = SignatureState(request_no=number, provider="pending", status="requesting")

    def _signature_request(self, stage: Stage) -> records.SignatureRequestInput:
        spec = stage.request_signature
        sig = self.state.signature
        assert spec is not None and sig is not None
        return records.SignatureRequestInput(
            opportunity_id=self.state.opportunity_id,
            request_no=sig.request_no,
            template=spec.template,
            subject=spec.subject,
        )

    async def _request_signature(self, stage: Stage) -> None:
        sent: records.SignatureSent = await self.attention.record(
            records.REQUEST_SIGNATURE, self._signature_request(stage), records.SignatureSent
        )
        self._signature_sent(sent)

    def _signature_sent(self, sent: records.SignatureSent) -> None:
        sig = self.state.signature
        assert sig is not None
        sig.provider = sent.provider
        sig.envelope_id = sent.envelope_id
        sig.document_sha256 = sent.document_sha256
        sig.status = sent.status  # "undeliverable": no e-mail address; the activity told the owner
        self._signature_sent_at = workflow.now() if sent.status == "sent" else None
        self._publish()
        if sent.poll_seconds is not None and sent.status == "sent":  # a remote provider's envelope
            self._envelope_timer = RearmableTimer()
            self._watchers.append(
                asyncio.create_task(self._watch_envelope(sent.envelope_id, sent.poll_seconds, sent.strays_possible))
            )

    def _answer(self) -> OpportunityAnswer:
        s = self.state
        return OpportunityAnswer(
            opportunity_id=s.opportunity_id, stage=s.stage, status=s.status, checkpoints=len(s.checkpoints)
        )

    def _publish(self) -> None:
        """Search attributes and current details: where the Web UI shows this opportunity."""
        s = self.state
        stage_name = "Closed Lost" if s.stage == CLOSED_LOST_STAGE else self.process.stage(s.stage).name
        lines = [
            f"**{stage_name}** ({s.probability} %) · status **{s.status.value}**",
            f"{self.process.name} process v{self.process.version} · owner `{s.owner_id}` · "
            f"{len(s.checkpoints)} checkpoint(s)",
        ]
        if s.signature:
            lines.append(f"signature #{s.signature.request_no}: {s.signature.status} ({s.signature.provider})")
        if s.lost_reason:  # free text the customer may be in: on record, never in the Web UI
            lines.append("lost: the reason is on record (`starter.py timeline`)")
        attributes = [
            SA_PRODUCT.value_set(s.product.value),
            SA_STAGE.value_set(s.stage),
            SA_OWNER_ID.value_set(s.owner_id),
            SA_CUSTOMER_ID.value_set(s.customer_id),
            SA_OPPORTUNITY_STATUS.value_set(s.status.value),
        ]
        self._console.publish(attributes, "\n\n".join(lines))
