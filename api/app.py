"""The FastAPI application: `uvicorn --factory api.app:create_app`.

Tests pass their own settings, Temporal client and task queue; the dev stack relies on
the environment. A malformed process file stops the app at start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api import access, errors, limits
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
from observability import observe_process, tracing
from observability.metrics import mail_queue_gauges, meter_of
from store.db import make_async_engine, make_session_factory
from workflows import TASK_QUEUE
from workflows.client import connect
from workflows.starts import Starts


def create_app(
    settings: Settings | None = None, *, client: Client | None = None, task_queue: str = TASK_QUEUE
) -> FastAPI:
    settings = settings or get_settings()
    if client is None:  # this process's own client: its logs, metrics port and traces first (observability/)
        observe_process(settings, "api")
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
        # The mail queue's gauges on the metrics port, if the client's runtime has one.
        async with mail_queue_gauges(meter_of(temporal), app.state.services.sessions, settings.metrics_interval):
            yield
        await engine.dispose()

    app = FastAPI(
        title="needflow API",
        version="1.0.0",
        summary="Needs-based selling for banks: referrals, opportunities, consents, events.",
        lifespan=lifespan,
        # FastAPI's own spans would record paths and queries as sent (a signing link's
        # token, `to=ADDRESS`): needflow's (observability/tracing.py) hold route templates.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    signing.redact_signing_links_in_logs()
    app.add_middleware(limits.RequestGuard, settings=settings)  # body size, path and query: api/limits.py
    # Outside the request guard: the caller's key and rate limit first (api/access.py).
    app.add_middleware(access.AccessGuard, settings=settings)
    # The Temporal Web UI calls /codec from its own origin; no other path answers CORS.
    app.add_middleware(codec.CodecCors, origins=settings.resolved_codec_cors_origins)
    tracing.instrument_app(app, settings)  # outermost: a span for every request, refused ones too
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
        # The JSON API (the codec's protocol too) declares its error shape; the HTML pages
        # (signing: its own declarations; dashboard, the codec's sign-in: not in the
        # document) answer their own pages.
        json_api = any(getattr(r, "path", "").startswith(("/v1/", "/codec/")) for r in router.routes)
        app.include_router(router, responses=errors.ERROR_RESPONSES if json_api else None)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
