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
from temporalio.worker import Worker

from activities.daily import DailyActivities
from activities.mail import Mailer, SmtpSettings
from activities.opportunity import OpportunityActivities
from activities.referral import ReferralActivities
from config import Settings, get_settings
from domain.process import load_catalog
from esign.docusign import DocuSignProvider
from esign.local import LocalSigningProvider
from esign.provider import ESignatureProvider
from store.db import make_async_engine, make_session_factory
from workflows import TASK_QUEUE
from workflows.client import connect
from workflows.daily import DailyReviewWorkflow
from workflows.opportunity import OpportunityWorkflow
from workflows.referral import ReferralWorkflow
from workflows.schedules import ensure_schedules
from workflows.starts import Starts

WORKFLOWS = [OpportunityWorkflow, ReferralWorkflow, DailyReviewWorkflow]


def esign_provider(settings: Settings) -> ESignatureProvider:
    """DocuSign when NEEDFLOW_ESIGN_PROVIDER=docusign (configured by DOCUSIGN_*), else
    needflow's own signing page."""
    if settings.esign_provider == "docusign":
        return DocuSignProvider.from_settings(settings)
    return LocalSigningProvider(settings.resolved_public_base_url)


class _StoreWorker(Worker):
    """A Worker that closes its activities' database pool when it stops, so a worker
    started and stopped (a test, a restart) leaves no connections behind."""

    def __init__(self, engine: AsyncEngine, esign: ESignatureProvider, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._esign = esign

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self._engine.dispose()
            if isinstance(self._esign, DocuSignProvider):
                self._esign.close()


def build_worker(client: Client, settings: Settings, task_queue: str = TASK_QUEUE) -> Worker:
    """Every workflow and activity of needflow on `task_queue`; `async with` it, or `run()`."""
    engine = make_async_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    mailer = Mailer(SmtpSettings.from_url(settings.smtp_url) if settings.smtp_url else None, settings.mail_from)
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
        activities=[*opportunity.all(), *referral.all(), *daily.all()],
    )


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
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
