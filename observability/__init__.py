"""Observability: metrics (Prometheus), traces (OpenTelemetry) and structured logs.

- `names.py`: every metric needflow exports, its labels and meaning;
- `metrics.py`: the metrics ports (the Temporal SDK's Prometheus exporter), the API's
  event counts and the mail queue's gauges;
- `workflow_metrics.py`: what the workflows record, replay-safe;
- `tracing.py`: API → workflow → activity traces;
- `logs.py`: text or JSON lines, with the workflow's and activity's ids, without PII.

`observe_process` sets up a process's own telemetry, once, before it connects to
Temporal: the worker's `main` and the API when it connects its own client (an app or
worker handed a client, as in the tests, uses that client's runtime and interceptors).
README "Observability" lists the settings and their defaults.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from config import Settings


def observe_process(settings: Settings, role: Literal["worker", "api"]) -> None:
    """This process's logs (NEEDFLOW_LOG_FORMAT), metrics port (the default Temporal
    runtime serves Prometheus on NEEDFLOW_METRICS_PORT for the worker,
    NEEDFLOW_API_METRICS_PORT for the API) and traces (NEEDFLOW_TRACING). Call it before
    the process's first Temporal client is made."""
    # Imported here: the workflows import this package's `workflow_metrics` and need none of it.
    from temporalio.runtime import Runtime

    from observability.logs import configure_logging
    from observability.metrics import bind_address, prometheus_runtime
    from observability.tracing import setup_tracing

    configure_logging(settings.log_format)
    port, variable = (
        (settings.metrics_port, "NEEDFLOW_METRICS_PORT")
        if role == "worker"
        else (settings.api_metrics_port, "NEEDFLOW_API_METRICS_PORT")
    )
    log = logging.getLogger("needflow.observability")
    if port:
        Runtime.set_default(prometheus_runtime(settings.metrics_host, port, variable), error_if_already_set=False)
        log.info("metrics at http://%s/metrics", bind_address(settings.metrics_host, port))
    if setup_tracing(settings, f"needflow-{role}") is not None:
        log.info("tracing on: spans go to %s", settings.resolved_tracing)
