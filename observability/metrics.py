"""Prometheus metrics: the Temporal SDK's and needflow's own, on a port of each process.

The exporter is the Temporal SDK's (its Rust core serves `/metrics`): a process that
should be scraped runs on a `Runtime` configured with `PrometheusConfig` (`prometheus_runtime`,
made the default by `observability.observe_process` before the process connects), and
every client and worker of that runtime reports through it. The same runtime's meter
carries needflow's metrics (`observability/names.py`): the API's through
`meter_of(client)` here, the workflows' through `workflow.metric_meter()`
(`observability/workflow_metrics.py`), which is replay-safe. A runtime without metrics
gives a no-op meter: then nothing here costs anything, and the mail queue is not read.

Why a port of its own rather than `/metrics` on the API: the API's port faces the bank's
systems and customers' browsers (the signing page); the metrics port listens on
NEEDFLOW_METRICS_HOST (127.0.0.1 unless set) for a Prometheus inside, without a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from observability import names

log = logging.getLogger("needflow.metrics")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class MetricsPortError(RuntimeError):
    """The metrics port could not be opened; the message names the address and the variable."""


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def prometheus_runtime(host: str, port: int, variable: str = "NEEDFLOW_METRICS_PORT") -> Runtime:
    """A Temporal runtime serving its metrics, and needflow's, at http://HOST:PORT/metrics."""
    address = bind_address(host, port)
    config = PrometheusConfig(
        bind_address=address,
        histogram_bucket_overrides={names.SIGNATURE_ROUND_TRIP: names.SIGNATURE_ROUND_TRIP_BUCKETS},
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=config))
    except ValueError as err:  # the core's "Failed starting Prometheus exporter: Address already in use"
        raise MetricsPortError(
            f"cannot serve metrics on {address} ({variable}, NEEDFLOW_METRICS_HOST): {err}. "
            f"Choose another port, or set {variable}=off"
        ) from None


def meter_of(client: Client) -> MetricMeter:
    """The metric meter of the runtime `client` runs on (no-op when it has no metrics)."""
    return (client.service_client.config.runtime or Runtime.default()).metric_meter


# ---------------------------------------------------------------- events (the API)


def _event_result(exc: BaseException) -> str:
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    code = getattr(exc, "code", None)
    if status == 409:
        return "conflict" if code == "conflict" else "refused"
    return {422: "invalid", 404: "not_found"}.get(status, "error")  # type: ignore[arg-type]


def _answer(response: Any) -> str:
    result = getattr(response, "result", None)
    if result is None and isinstance(getattr(response, "body", None), bytes):
        with contextlib.suppress(ValueError):
            result = json.loads(response.body).get("result")
    return str(result or "applied")


def counts_events(handler: F) -> F:
    """Counts what `POST /v1/events` answers (names.EVENTS), by event type and result.
    Decorates the route's handler, which takes the event as `body` and the services as
    `svc`; whatever the handler answers or raises passes through unchanged."""

    @functools.wraps(handler)
    async def counted(*args: Any, **kwargs: Any) -> Any:
        body, svc = kwargs.get("body"), kwargs.get("svc")
        try:
            response = await handler(*args, **kwargs)
        except Exception as exc:
            _count_event(svc, body, _event_result(exc))
            raise
        _count_event(svc, body, _answer(response))
        return response

    return counted  # type: ignore[return-value]


def _count_event(svc: Any, body: Any, result: str) -> None:
    client, event_type = getattr(svc, "client", None), getattr(body, "type", None)
    if client is None or event_type is None:
        return
    try:
        meter_of(client).create_counter(names.EVENTS, "Events answered by POST /v1/events", "1").add(
            1, {"type": str(getattr(event_type, "value", event_type)), "result": result}
        )
    except Exception:  # noqa: BLE001 - a metric never fails a request
        log.warning("could not count an event", exc_info=True)


# ---------------------------------------------------------------- the mail queue (the API)


class MailQueueGauges:
    """The outbox as a queue (`store.outbox.mail_queue`): its depth, the age of its
    oldest message, and the messages that need a person, as gauges."""

    def __init__(self, meter: MetricMeter, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.depth = meter.create_gauge(names.MAIL_QUEUE_DEPTH, "E-mail not yet handed to the SMTP server", "1")
        self.oldest = meter.create_gauge_float(
            names.MAIL_QUEUE_OLDEST_AGE, "Seconds the oldest e-mail not yet handed to the SMTP server has waited", "s"
        )
        self.attention = meter.create_gauge(
            names.MAIL_NEEDS_ATTENTION, "E-mail the sender will not try again (failed, unknown)", "1"
        )

    async def refresh(self) -> None:
        from store.outbox import mail_queue

        async with self.sessions() as session:
            queue = await mail_queue(session)
        self.depth.set(queue.pending)
        self.oldest.set(queue.oldest_pending_age_seconds or 0.0)
        self.attention.set(queue.failed, {"status": "failed"})
        self.attention.set(queue.unknown, {"status": "unknown"})


@contextlib.asynccontextmanager
async def mail_queue_gauges(
    meter: MetricMeter, sessions: async_sessionmaker[AsyncSession], every: float
) -> AsyncIterator[MailQueueGauges | None]:
    """While inside: the mail queue's gauges, refreshed every `every` seconds (None, and
    no query at all, when the meter is a no-op)."""
    if meter is MetricMeter.noop:
        yield None
        return
    gauges = MailQueueGauges(meter, sessions)

    async def refresh_forever() -> None:
        while True:
            try:
                await gauges.refresh()
            except Exception:  # noqa: BLE001 - the database may be away for a moment; look again later
                log.warning("could not read the mail queue for its metrics", exc_info=True)
            await asyncio.sleep(every)

    task = asyncio.create_task(refresh_forever(), name="needflow-mail-queue-gauges")
    try:
        yield gauges
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
