"""The needflow worker: every workflow and activity, on one task queue.

Run `python worker.py` (the dev stack does). Configuration comes from `config.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.daily import DailyActivities
from activities.errors import ActivityErrors
from activities.mail import Mailer, MailSender, SenderPolicy, SmtpSettings
from activities.opportunity import OpportunityActivities
from activities.referral import ReferralActivities
from config import Settings, get_settings
from domain.process import load_catalog
from esign.docusign import DocuSignProvider
from esign.local import LocalSigningProvider
from esign.provider import ESignatureProvider
from observability import observe_process
from store.db import make_async_engine, make_session_factory
from workflows import TASK_QUEUE
from workflows.client import connect
from workflows.daily import DailyReviewWorkflow
from workflows.mail import MailSenderWorkflow, mail_wake, wake_mail_sender
from workflows.opportunity import OpportunityWorkflow
from workflows.referral import ReferralWorkflow
from workflows.schedules import ensure_schedules
from workflows.starts import Starts

WORKFLOWS = [OpportunityWorkflow, ReferralWorkflow, DailyReviewWorkflow, MailSenderWorkflow]


def esign_provider(settings: Settings) -> ESignatureProvider:
    """DocuSign when NEEDFLOW_ESIGN_PROVIDER=docusign (configured by DOCUSIGN_*), else
    needflow's own signing page."""
    if settings.esign_provider == "docusign":
        return DocuSignProvider.from_settings(settings)
    return LocalSigningProvider(settings.resolved_public_base_url)


class _StoreWorker(Worker):
    """A Worker that makes sure its task queue's e-mail sender runs when it starts
    (`workflows/mail.py`), and closes its activities' database pool when it stops, so a
    worker started and stopped (a test, a restart) leaves no connections behind."""

    def __init__(
        self, engine: AsyncEngine, esign: ESignatureProvider, client: Client, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(client, *args, **kwargs)
        self._engine = engine
        self._esign = esign
        self._client = client

    async def run(self) -> None:
        try:
            # Started, or woken to look at what is due: mail recorded while no worker ran.
            await wake_mail_sender(self._client, self.task_queue)
            await super().run()
        finally:
            await self._engine.dispose()
            if isinstance(self._esign, DocuSignProvider):
                self._esign.close()


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """How the worker runs workflow code: as plain code unless NEEDFLOW_WORKFLOW_SANDBOX.

    temporalio's sandbox re-imports a workflow's module into a fresh namespace for every
    run it starts or replays, and checks each call a workflow makes. Measured here
    (bench/README.md): creating those instances and the sandbox's per-payload hooks took
    about a fifth of the worker's Python CPU per mortgage; opening 10,000 opportunities
    cost the worker 37 ms of CPU each in the sandbox and 18 ms without; a cached workflow
    holds ~0.26 MB in it and ~0.12 MB without; and every advance of a workflow evicted
    from the cache replays it into a new sandboxed instance. Passing every module through
    the sandbox is no middle way: the workflow's own module is then imported outside it,
    and its calls go unchecked (tried).

    What the sandbox guarded stays guarded elsewhere: workflow code is deterministic by
    construction (domain rules are pure functions; time, ids and randomness come from
    `workflow.*`), its modules hold only constants, every in-process test runs its
    workflows in the sandbox (tests/helpers.py `IsolatedSettings`), and every saved and
    fresh history is replayed in it (tests/test_replay.py)."""
    return SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()


def build_worker(client: Client, settings: Settings, task_queue: str = TASK_QUEUE) -> Worker:
    """Every workflow and activity of needflow on `task_queue`; `async with` it, or `run()`."""
    engine = make_async_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    mailer = Mailer(mail_wake(client, task_queue, settings.smtp_url))
    smtp = (
        SmtpSettings.from_url(
            settings.smtp_url,
            timeout=settings.smtp_timeout,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        )
        if settings.smtp_url
        else None
    )
    sender = MailSender(
        engine,
        smtp,
        settings.mail_from,
        SenderPolicy(
            max_attempts=settings.mail_max_attempts,
            retry_seconds=settings.mail_retry_seconds,
            retry_max_seconds=settings.mail_retry_max_seconds,
            poll_seconds=settings.mail_poll_seconds,
        ),
    )
    esign = esign_provider(settings)
    catalog = load_catalog(settings.processes_dir)
    opportunity = OpportunityActivities(
        sessions, esign, mailer, catalog, timedelta(seconds=settings.signing_link_ttl), settings.esign_poll_seconds
    )
    starts = Starts(client, task_queue, settings.search_attributes)
    referral = ReferralActivities(sessions, mailer, starts, settings.referrer_window_days)
    daily = DailyActivities(sessions, mailer, catalog)
    return _StoreWorker(
        engine,
        esign,
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        workflow_runner=workflow_runner(settings),
        max_cached_workflows=settings.workflow_cache,
        activities=[*opportunity.all(), *referral.all(), *daily.all(), *sender.all()],
        # What retrying cannot fix fails once, and the workflow shows it (activities/errors.py).
        interceptors=[ActivityErrors()],
    )


async def main() -> None:
    settings = get_settings()
    # Logs, the metrics port and traces, before the first client (observability/).
    observe_process(settings, "worker")
    client = await connect(settings)
    # The schedules are created here, where every deployment starts (workflows/schedules.py).
    await ensure_schedules(client, TASK_QUEUE, settings)
    worker = build_worker(client, settings)
    logging.getLogger("needflow.worker").info(
        "worker polling %s on %s (%s)", TASK_QUEUE, settings.resolved_temporal_address, settings.namespace
    )
    await worker.run()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
