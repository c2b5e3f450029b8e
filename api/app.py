"""The FastAPI application: `uvicorn --factory api.app:create_app`.

Tests pass their own settings, Temporal client and task queue; the dev stack relies on
the environment. A malformed process file stops the app at start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api import errors
from api.deps import Services
from api.routers import (
    api_keys,
    campaigns,
    codec,
    consents,
    customers,
    dashboard,
    employees,
    events,
    imports,
    opportunities,
    outbox,
    referrals,
    reports,
    scorecards,
    signing,
    webhooks,
)
from config import Settings, get_settings
from domain.process import load_catalog
from domain.routing import load_routing_rules
from store.db import make_async_engine, make_session_factory
from workflows import TASK_QUEUE
from workflows.client import connect
from workflows.starts import Starts


def create_app(
    settings: Settings | None = None, *, client: Client | None = None, task_queue: str = TASK_QUEUE
) -> FastAPI:
    settings = settings or get_settings()
    # Both fail loudly at start, naming the file, the stage or rule, and the field.
    catalog = load_catalog(settings.processes_dir)
    routing_rules = load_routing_rules(settings.routing_rules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_async_engine(settings.resolved_database_url)
        temporal = client or await connect(settings)
        app.state.services = Services(
            settings=settings,
            sessions=make_session_factory(engine),
            client=temporal,
            catalog=catalog,
            routing_rules=routing_rules,
            starts=Starts(temporal, task_queue, settings.search_attributes),
        )
        yield
        await engine.dispose()

    app = FastAPI(
        title="needflow API",
        version="1.0.0",
        summary="Needs-based selling for banks: referrals, opportunities, consents, events.",
        lifespan=lifespan,
    )
    errors.install(app)
    signing.redact_signing_links_in_logs()
    # The Temporal Web UI calls /codec from its own origin; no other path answers CORS.
    app.add_middleware(codec.CodecCors, origins=settings.resolved_codec_cors_origins)
    for router in (
        api_keys.router,
        customers.router,
        consents.router,
        employees.router,
        referrals.router,
        opportunities.router,
        imports.router,
        campaigns.router,
        events.router,
        outbox.router,
        signing.router,
        webhooks.router,
        reports.router,
        scorecards.router,
        dashboard.router,
        codec.router,
    ):
        app.include_router(router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
