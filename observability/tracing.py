"""OpenTelemetry traces: one trace from an API request through its workflow to its activities.

Off unless configured (NEEDFLOW_TRACING, or OTEL_EXPORTER_OTLP_ENDPOINT: see
`config.Settings.resolved_tracing`). When on:

- `setup_tracing` (from `observability.observe_process`) makes the process's global
  tracer provider, exporting in batches over OTLP/HTTP (the `OTEL_EXPORTER_OTLP_*`
  variables: endpoint, headers, timeout) or to the console; the service is
  `needflow-api` or `needflow-worker` unless OTEL_SERVICE_NAME names it;
- `client_interceptors` gives `workflows.client.connect` the SDK's `TracingInterceptor`,
  so every client call (start, update, signal, query) makes a span and carries its
  context in the call's headers, and every worker built on that client continues it:
  `RunWorkflow`/`HandleUpdate` spans in the workflow, `StartActivity` and `RunActivity`
  spans for its activities;
- `HttpTracing` (installed by `instrument_app`) makes each API request a server span,
  continuing a caller's `traceparent`, named by its route's template
  (`POST /v1/opportunities/{opportunity_id}/advance`).

What a span holds: route templates, methods, status codes, workflow and activity types
and ids, update names. Never a path as requested (a signing link's token), a query
string (`to=ADDRESS`), a header, a body or an exception's message: customers' data stays
out of traces. For that reason FastAPI's own request spans (which record the path and
query as sent) are turned off in `api.app.create_app`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
    from temporalio.client import Interceptor

    from config import Settings


def tracing_on(settings: Settings) -> bool:
    return settings.resolved_tracing != "off"


def setup_tracing(settings: Settings, service: str) -> TracerProvider | None:
    """This process's global tracer provider, exporting as the settings say; None when
    tracing is off. Once per process (OpenTelemetry keeps the first provider set)."""
    mode = settings.resolved_tracing
    if mode == "off":
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, ...
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def client_interceptors(settings: Settings) -> list[Interceptor]:
    """The Temporal client's interceptors for tracing (none when it is off). On the
    client, they apply to every worker built on it too."""
    if not tracing_on(settings):
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


class HttpTracing:
    """ASGI middleware: a server span per HTTP request (module docstring)."""

    def __init__(self, app: ASGIApp, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        self.tracer_provider = tracer_provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        provider = self.tracer_provider or trace.get_tracer_provider()
        tracer = provider.get_tracer("needflow.api")
        method = str(scope.get("method", "HTTP"))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
            record_exception=False,  # an exception's message may quote a customer
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_noting_status)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR)
                raise
            finally:
                route = _route_template(scope)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)


def _route_template(scope: Scope) -> str | None:
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else None


def instrument_app(app: FastAPI, settings: Settings) -> None:
    """Add `HttpTracing` to the app when tracing is on (outermost of what is added so
    far: call it after the other middleware)."""
    if tracing_on(settings):
        app.add_middleware(HttpTracing)
