"""The e-mail sender: one long-running workflow per task queue
(`mail-sender-<task queue>`, e.g. `mail-sender-needflow`) that delivers the outbox.

Lifecycle activities and the API only record mail (`activities.mail.Mailer`); this
workflow runs the sender's activity (`mail.send_due`, `activities.mail.MailSender`) in
rounds: each round sends the messages due, in one SMTP session, and says when the next
is due. Between rounds it waits for that moment, for its idle poll
(NEEDFLOW_MAIL_POLL_SECONDS), or for a `wake` signal, whichever comes first: every
transaction that records mail sends one when it commits (`MailWake`), so mail goes out
within moments. While the SMTP server is unreachable it ignores wakes and waits its
doubling back-off instead. After `MailSenderInput.rounds_per_run` rounds (200; or when
the server suggests it) it continues as new, so its history stays short.

Why a workflow of its own, not a Temporal Schedule: a schedule runs on its clock (at best
every few seconds, each run a workflow execution of its own in the Web UI), and can be
triggered but not told "the next retry is due in 40 s"; this workflow runs exactly when
there is mail (woken by the commit) or a retry is due, one at a time (one workflow id:
two rounds never overlap), and shows its last round in its current details. Why not
send from the lifecycle activities with Temporal's retries: an SMTP outage would then
hold up the referral desk (the issue this fixes), and a retried batch would resend what
had gone out.

It is started by every worker that starts (`worker.py`), and by any wake that finds it
not running (signal-with-start): nobody has to create it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.mail import SEND_DUE, MailSenderInput, SendDue, SendReport

#: A round sends for at most a minute (activities.mail.SenderPolicy.batch_seconds) plus
#: the message in flight; heartbeats come every few seconds while it waits on SMTP.
ROUND_TIMEOUT = timedelta(minutes=10)
ROUND_HEARTBEAT = timedelta(seconds=30)
#: A failed round (the database unreachable, say) is retried, at most a minute apart.
ROUND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


#: After a round that failed for good, the sender looks again this much later.
POLL_AFTER_FAILURE = timedelta(minutes=5)


def sender_workflow_id(task_queue: str) -> str:
    return f"mail-sender-{task_queue}"


@workflow.defn
class MailSenderWorkflow:
    def __init__(self) -> None:
        self._woken = False

    @workflow.signal
    def wake(self) -> None:
        """Mail was recorded: look now (unless the SMTP server is down)."""
        self._woken = True

    @workflow.run
    async def run(self, input: MailSenderInput) -> None:
        outage = input.outage_streak
        for _ in range(input.rounds_per_run):
            self._woken = False  # a wake during the round makes the next one start at once
            try:
                report: SendReport = await workflow.execute_activity(
                    SEND_DUE,
                    SendDue(outage_streak=outage),
                    result_type=SendReport,
                    start_to_close_timeout=ROUND_TIMEOUT,
                    heartbeat_timeout=ROUND_HEARTBEAT,
                    retry_policy=ROUND_RETRY,
                )
            except ActivityError as exc:
                # A round that failed for good (activities/errors.py: the database refused a
                # write) must not end the sender, or mail stalls until the next wake fails
                # the same way: say so, wait a poll and look again.
                workflow.logger.error("mail round failed for good: %s", type(exc.cause).__name__)
                workflow.set_current_details(
                    f"Last round failed for good ({type(exc.cause).__name__}); see the worker's log. "
                    f"Next look in {POLL_AFTER_FAILURE.total_seconds():g} s"
                )
                await workflow.sleep(POLL_AFTER_FAILURE)
                continue
            outage = outage + 1 if report.smtp_down else 0
            workflow.set_current_details(_details(report, outage))
            if report.more:
                continue
            if report.smtp_down:
                await workflow.sleep(timedelta(seconds=report.wait_seconds))
            else:
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(lambda: self._woken, timeout=timedelta(seconds=report.wait_seconds))
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(MailSenderInput(outage_streak=outage, rounds_per_run=input.rounds_per_run))


def _details(r: SendReport, outage: int) -> str:
    last = f"Last round: {r.sent} sent, {r.retrying} to retry, {r.failed} failed, {r.unknown} unknown"
    if r.smtp_down:
        # `smtp_down` comes redacted (activities/mail.py): a reply may quote an address.
        return f"SMTP server unavailable ({outage} round(s) in a row): {r.smtp_down}. Next try in {r.wait_seconds:g} s"
    return f"{last}; next look in {r.wait_seconds:g} s at the latest"


# ---------------------------------------------------------------- client side


log = logging.getLogger("needflow.mail")

#: How long a wake may take before it is given up (the sender polls anyway).
WAKE_TIMEOUT = 10.0


async def wake_mail_sender(client: Client, task_queue: str) -> None:
    """Signal the sender, starting it first if it is not running (signal-with-start)."""
    await client.start_workflow(
        MailSenderWorkflow.run,
        MailSenderInput(),
        id=sender_workflow_id(task_queue),
        task_queue=task_queue,
        start_signal="wake",
        static_summary="E-mail sender: delivers the outbox over SMTP",
        static_details="Woken when mail is recorded; retries each message with a doubling back-off; "
        "a message whose delivery is in doubt is marked unknown, never sent twice.",
    )


def mail_wake(client: Client, task_queue: str, smtp_url: str | None) -> MailWake | None:
    """The wake for a `Mailer` of a process whose settings name `smtp_url`; None when
    there is no SMTP server: the outbox is then the delivery (`make run`, a demo), the
    sender has nothing to send, and waking it would cost a round of its workflow (about
    a dozen history events) per e-mail for nothing (bench/README.md)."""
    return MailWake(client, task_queue) if smtp_url else None


class MailWake:
    """`Mailer`'s wake: called when a transaction that recorded mail commits; signals the
    sender in the background (the caller never waits on it) and never fails. Coalesced:
    while one signal is on its way, any number of wakes make at most one more."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self._task: asyncio.Task | None = None
        self._again = False

    def __call__(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._again = False
        self._task = asyncio.get_running_loop().create_task(self._signal())

    async def _signal(self) -> None:
        while True:
            try:
                await asyncio.wait_for(wake_mail_sender(self.client, self.task_queue), WAKE_TIMEOUT)
            except Exception:  # noqa: BLE001 - the sender polls anyway
                log.warning("could not wake the mail sender; it will find the mail on its next look", exc_info=True)
            if not self._again:
                return
            self._again = False
