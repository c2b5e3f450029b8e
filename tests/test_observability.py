"""Observability (observability/): the metrics ports, traces API → workflow → activity,
and JSON log lines without personal data.

The module runs its own stack (worker and API on a task queue of their own) on a client
whose runtime serves Prometheus on a free port and whose interceptor traces, so the rest
of the suite's shared runtime and fixtures stay as they are. The global OpenTelemetry
tracer provider is set once here, exporting to memory; nothing else in the suite makes
spans (FastAPI's own are off in every app).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import insert
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from config import Settings
from domain import records
from observability import names
from observability.logs import JsonFormatter, redact
from observability.metrics import MailQueueGauges, prometheus_runtime
from observability.tracing import client_interceptors
from store.db import make_async_engine, make_session_factory, make_sync_engine
from store.migrate import upgrade
from store.models import Notification
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.helpers import TEST_CODEC_KEYS, Api, serve_app, until, within
from worker import build_worker
from workflows.client import DATA_CONVERTER

ROOT = Path(__file__).resolve().parent.parent

#: What the journeys here know of their customer: none of it may reach a log line.
PII = ("Rachel", "Adams", "rachel@example.com", "rachel%40example.com", "+12125550100", "2125550100")
CLOSE_REASON = "Rachel Adams moved to Canada"

SPANS = InMemorySpanExporter()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tracer_provider() -> TracerProvider:
    """The process's global tracer provider, exporting to SPANS (set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    return provider


# ---------------------------------------------------------------- Prometheus text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (m := _SAMPLE.match(line)):
            samples.append(Sample(m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def scrape(url: str) -> list[Sample]:
    async with httpx.AsyncClient() as http:
        r = await within(http.get(url), f"GET {url}")
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


# ---------------------------------------------------------------- the stack


@dataclass
class Observed:
    api: Api
    client: Client
    metrics_url: str


@pytest_asyncio.fixture(scope="module")
async def observed(
    temporal_env: WorkflowEnvironment, settings: Settings, keys: dict[str, str]
) -> AsyncIterator[Observed]:
    _tracer_provider()
    port = _free_port()
    runtime = prometheus_runtime("127.0.0.1", port)
    stack_settings = settings.model_copy(update={"tracing": "console"})  # on: the app traces requests
    base = temporal_env.client
    client = await Client.connect(
        base.service_client.config.target_host,
        namespace=base.namespace,
        data_converter=DATA_CONVERTER,
        runtime=runtime,
        interceptors=client_interceptors(stack_settings),
    )
    task_queue = f"needflow-obs-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, stack_settings, task_queue), serve_app(stack_settings, client, task_queue) as http:
        yield Observed(Api(http, keys["all"]), client, f"http://127.0.0.1:{port}/metrics")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of needflow's and the Temporal SDK's loggers at INFO and above, as
    JsonFormatter writes it, while the test runs."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(n) for n in ("needflow", "temporalio", "uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    # As configure_logging does for JSON: the workflow's details are fields, not message text.
    workflow.logger.workflow_info_on_message = False
    try:
        yield out
    finally:
        workflow.logger.workflow_info_on_message = True
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def parsed(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def assert_no_pii(text: str) -> None:
    for item in (*PII, CLOSE_REASON, "moved to Canada"):
        assert item not in text, f"{item!r} in the logs:\n{text}"


# ---------------------------------------------------------------- metrics


async def test_a_journey_counts_stage_transitions_events_and_the_signature_round_trip(observed: Observed) -> None:
    api = observed.api
    before = await scrape(observed.metrics_url)

    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    submitted = f"sub-{opp['id']}"
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-1"}, event_id=submitted)
    r = await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-1"}, event_id=submitted)
    assert r.json()["result"] == "duplicate"
    r = await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-1"})
    signed = await api.sign(await api.signing_link(r.json()["opportunity"]))
    assert signed.status_code == 200, signed.text
    # Won: the process refuses a submission now (409), which is counted as refused.
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-2"}, expect=409)

    async def counted() -> list[Sample] | None:
        after = await scrape(observed.metrics_url)
        won = total(after, names.STAGE_TRANSITIONS, product="mortgage", stage="closed_won")
        refused = total(after, names.EVENTS, type="mortgage.application_submitted", result="refused")
        return (
            after
            if won > total(before, names.STAGE_TRANSITIONS, product="mortgage", stage="closed_won")
            and (refused > total(before, names.EVENTS, type="mortgage.application_submitted", result="refused"))
            else None
        )

    after = await until(counted, "the journey's metrics")

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    stages = ["interested", "searching", "applied", "approved", "closed_won"]
    assert {s: delta(names.STAGE_TRANSITIONS, product="mortgage", stage=s) for s in stages} == dict.fromkeys(stages, 1)
    assert delta(names.STAGE_TRANSITIONS, product="mortgage", trigger="manual") == 2
    assert delta(names.STAGE_TRANSITIONS, product="mortgage", trigger="event") == 3
    assert delta(names.EVENTS, type="mortgage.application_submitted", result="applied") == 1
    assert delta(names.EVENTS, type="mortgage.application_submitted", result="duplicate") == 1
    assert delta(names.EVENTS, type="mortgage.application_submitted", result="refused") == 1
    assert delta(names.EVENTS, type="mortgage.application_approved", result="applied") == 1
    assert delta(f"{names.SIGNATURE_ROUND_TRIP}_count", product="mortgage", provider="local") == 1
    # The round trip's buckets are the ones configured: a minute up to two weeks.
    buckets = {s.labels["le"] for s in after if s.name == f"{names.SIGNATURE_ROUND_TRIP}_bucket"}
    assert {"60", "86400", "1209600", "+Inf"} <= buckets


async def test_the_metrics_port_serves_the_temporal_sdks_metrics(observed: Observed) -> None:
    api = observed.api
    # The module's stack is shared: count from what earlier tests left, so the wait is for
    # this test's workflow, not one finished before it.
    before = total(
        await scrape(observed.metrics_url), "temporal_workflow_completed", workflow_type="OpportunityWorkflow"
    )
    opp = await api.opportunity()
    await api.post(
        f"/v1/opportunities/{opp['id']}/close-lost", {"actor_id": opp["owner_id"], "reason": "no longer interested"}
    )

    async def completed() -> list[Sample] | None:
        samples = await scrape(observed.metrics_url)
        done = total(samples, "temporal_workflow_completed", workflow_type="OpportunityWorkflow")
        return samples if done >= before + 1 else None

    samples = await until(completed, "temporal_workflow_completed for an opportunity")
    present = {s.name for s in samples}
    # The SDK's own: the client's requests, the worker's pollers and task latencies.
    assert {"temporal_request", "temporal_workflow_task_execution_latency_count"} <= present, sorted(present)
    assert any(n.startswith("temporal_activity_execution_latency") for n in present)
    # Beside them, the mail queue's gauges (read from the store when the API started).
    # (their values: test_the_mail_queue_gauges_read_depth_and_age_from_the_outbox)
    assert {names.MAIL_QUEUE_DEPTH, names.MAIL_QUEUE_OLDEST_AGE, names.MAIL_NEEDS_ATTENTION} <= present


async def test_the_mail_queue_gauges_read_depth_and_age_from_the_outbox() -> None:
    port = _free_port()
    runtime = prometheus_runtime("127.0.0.1", port)  # kept: the port closes with its runtime
    now = datetime.now(UTC)
    with fresh_database_url(test_database_base_url()) as url:
        upgrade(url)
        engine = make_sync_engine(url)
        rows = [
            ("m1", "pending", now - timedelta(minutes=10)),
            ("m2", "pending", now - timedelta(minutes=1)),
            ("m3", "sending", now - timedelta(minutes=5)),
            ("m4", "failed", now - timedelta(hours=3)),
            ("m5", "sent", now - timedelta(hours=4)),
        ]
        with engine.begin() as conn:
            conn.execute(
                insert(Notification),
                [
                    {
                        "id": i,
                        "to_address": "x@bank.example",
                        "subject": "s",
                        "body": "b",
                        "status": st,
                        "created_at": at,
                    }
                    for i, st, at in rows
                ],
            )
        engine.dispose()
        async_engine = make_async_engine(url)
        try:
            await MailQueueGauges(runtime.metric_meter, make_session_factory(async_engine)).refresh()
        finally:
            await async_engine.dispose()
    samples = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert total(samples, names.MAIL_QUEUE_DEPTH) == 3  # pending and sending
    assert 590 <= total(samples, names.MAIL_QUEUE_OLDEST_AGE) <= 700
    assert total(samples, names.MAIL_NEEDS_ATTENTION, status="failed") == 1
    assert total(samples, names.MAIL_NEEDS_ATTENTION, status="unknown") == 0


# ---------------------------------------------------------------- traces


def _span(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r} among {sorted({s.name for s in spans})}"
    return found[-1]


def _ancestors(spans: list[ReadableSpan], span: ReadableSpan) -> list[str]:
    """The names of `span` and its parents up to its trace's root (within `spans`)."""
    by_id = {s.context.span_id: s for s in spans}
    chain = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    assert span.parent is None, f"the chain {chain} breaks: a parent was not exported"
    return chain


async def test_a_command_is_traced_from_the_api_through_the_workflow_to_its_activities(observed: Observed) -> None:
    api = observed.api
    owner = await api.employee()
    SPANS.clear()
    opp = await api.opportunity(owner=owner)

    async def exported() -> list[ReadableSpan] | None:
        spans = list(SPANS.get_finished_spans())
        return spans if any(s.name == f"RunActivity:{records.OPEN_OPPORTUNITY}" for s in spans) else None

    spans = await until(exported, "the opening's spans")
    run_activity = _span(spans, f"RunActivity:{records.OPEN_OPPORTUNITY}")
    chain = _ancestors(spans, run_activity)
    # One trace, parent to child: the request, the client's update-with-start, the
    # workflow's start of the activity, the activity's run.
    assert chain[-1] == "POST /v1/opportunities", chain
    assert "StartUpdateWithStartWorkflow:OpportunityWorkflow" in chain, chain
    assert f"StartActivity:{records.OPEN_OPPORTUNITY}" in chain, chain
    assert len({s.context.trace_id for s in spans if s.name in chain}) == 1
    run_workflow = _span(spans, "RunWorkflow:OpportunityWorkflow")
    assert run_workflow.context.trace_id == run_activity.context.trace_id
    assert run_workflow.attributes["temporalWorkflowID"] == f"opportunity-{opp['id']}"
    http = _span(spans, "POST /v1/opportunities")
    assert http.kind == trace.SpanKind.SERVER and http.attributes["http.response.status_code"] == 201
    assert http.attributes["http.route"] == "/v1/opportunities"

    # An update (advance): its request's span is linked from the workflow's handling of
    # it, whose activities run in the workflow's own trace.
    SPANS.clear()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})

    async def advanced() -> list[ReadableSpan] | None:
        spans = list(SPANS.get_finished_spans())
        return spans if any(s.name == f"RunActivity:{records.RECORD_STAGE_CHANGE}" for s in spans) else None

    spans = await until(advanced, "the advance's spans")
    request = _span(spans, "POST /v1/opportunities/{opportunity_id}/advance")
    update = _span(spans, "StartWorkflowUpdate:advance")
    assert update.parent is not None and update.parent.span_id == request.context.span_id
    handled = _span(spans, "HandleUpdate:advance")
    assert [link.context.span_id for link in handled.links] == [update.context.span_id]
    recorded = _span(spans, f"RunActivity:{records.RECORD_STAGE_CHANGE}")
    assert recorded.context.trace_id == handled.context.trace_id == run_workflow.context.trace_id
    # Spans hold templates and ids, never a path as sent or a body.
    text = json.dumps([dict(s.attributes or {}) for s in spans]) + " ".join(s.name for s in spans)
    assert "Jane Realty" not in text and opp["id"] not in request.name
    assert_no_pii(text)


# ---------------------------------------------------------------- logs


async def test_log_lines_are_json_with_the_workflow_id_and_no_personal_data(
    observed: Observed, json_lines: io.StringIO
) -> None:
    api = observed.api
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    await api.post(f"/v1/opportunities/{opp['id']}/close-lost", {"actor_id": opp["owner_id"], "reason": CLOSE_REASON})
    workflow_id = f"opportunity-{opp['id']}"

    async def logged() -> list[dict] | None:
        lines = parsed(json_lines)  # every line parses as JSON
        stages = {ln["message"] for ln in lines if ln.get("workflow_id") == workflow_id}
        return lines if "stage closed_lost entered (manual)" in stages else None

    lines = await until(logged, "the workflow's log lines")
    ours = [ln for ln in lines if ln.get("workflow_id") == workflow_id]
    assert [ln["message"] for ln in ours if ln["message"].startswith("stage ")] == [
        "stage interested entered (manual)",
        "stage searching entered (manual)",
        "stage closed_lost entered (manual)",
    ]
    for line in ours:
        assert line["workflow_type"] == "OpportunityWorkflow" and line["logger"] == "temporalio.workflow"
        assert {"ts", "level", "run_id", "task_queue"} <= line.keys()
    assert ours[-1]["update_name"] == "close_lost"
    assert_no_pii(json_lines.getvalue())


async def test_a_plain_loggers_line_in_an_activity_carries_the_activitys_ids() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("needflow.test.activity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    @activity.defn(name="needflow.test.log")
    async def logs() -> None:
        log.warning("SMTP said: 550 <rachel@example.com> unknown; call +1 212 555 0100")

    try:
        await ActivityEnvironment().run(logs)
    finally:
        log.removeHandler(handler)
    [line] = parsed(out)
    info = ActivityEnvironment().info
    assert (line["activity_type"], line["workflow_id"], line["attempt"]) == (
        info.activity_type,
        info.workflow_id,
        info.attempt,
    )
    assert line["message"] == "SMTP said: 550 <[email]> unknown; call [phone]"


def test_redact_replaces_email_addresses_and_phone_numbers_only() -> None:
    assert redact("to=rachel%40example.com&x=1") == "to=[email]&x=1"
    assert redact("Rachel <rachel.adams+crm@mail.example.co.uk>") == "Rachel <[email]>"
    assert redact("+12125550100, +1 416 555 0100, (212) 555-0100, 212-555-0100") == "[phone], [phone], [phone], [phone]"
    kept = "opportunity opp-1f2e 2026-11-25T10:00:00+00:00 took 1234567 ms from 203.0.113.7:50000 v1.35.0"
    assert redact(kept) == kept


async def test_a_worker_process_serves_metrics_and_logs_json(temporal_env: WorkflowEnvironment) -> None:
    """The production path, in a process of its own: the settings from the environment,
    `observe_process` (the default runtime serving Prometheus, JSON logs), `connect`."""
    port = _free_port()
    base = temporal_env.client
    env = {
        **os.environ,
        "NEEDFLOW_TEMPORAL_ADDRESS": base.service_client.config.target_host,
        "NEEDFLOW_NAMESPACE": base.namespace,
        "NEEDFLOW_CODEC_KEYS": TEST_CODEC_KEYS,
        "NEEDFLOW_METRICS_PORT": str(port),
        "NEEDFLOW_LOG_FORMAT": "json",
        "NEEDFLOW_TRACING": "off",
    }
    script = f"""
import asyncio, logging
from temporalio import activity
from temporalio.worker import Worker
from config import get_settings
from observability import observe_process
from workflows.client import connect

@activity.defn
async def noop() -> None: ...

async def main() -> None:
    settings = get_settings()
    observe_process(settings, "worker")
    client = await connect(settings)
    logging.getLogger("needflow.test").info("connected for rachel@example.com at +1 212 555 0100")
    async with Worker(client, task_queue="needflow-obs-{uuid.uuid4().hex[:8]}", activities=[noop]):
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        ready = await within(proc.stdout.readline(), "the worker process's start", seconds=30)
        assert ready.strip() == b"ready"

        async def polling() -> list[Sample] | None:
            samples = await scrape(f"http://127.0.0.1:{port}/metrics")
            return samples if total(samples, "temporal_num_pollers") >= 1 else None

        samples = await until(polling, "the worker's pollers on its metrics port")
        assert total(samples, "temporal_request") >= 1
    finally:
        proc.terminate()
        _, err = await within(proc.communicate(), "the worker process's end")
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    messages = [ln["message"] for ln in lines]
    assert f"metrics at http://127.0.0.1:{port}/metrics" in messages
    assert "connected for [email] at [phone]" in messages
    assert all({"ts", "level", "logger", "message"} <= ln.keys() for ln in lines)
