"""needflow's logging: one line per record, text for people or JSON for a log pipeline
(NEEDFLOW_LOG_FORMAT), and never a customer's e-mail address or phone number.

`configure_logging` sets up the process's root logger once, in the worker and in the
API (under uvicorn it takes over uvicorn's own loggers, so its access log is one format
with the rest). In JSON every record is an object with `ts`, `level`, `logger` and
`message`, and, where the record was written in a workflow or an activity, the fields the
Temporal SDK adds (`workflow_id`, `run_id`, `workflow_type`, `activity_type`,
`activity_id`, `attempt`, `update_name`, `update_id`, `task_queue`, `namespace`); a plain
logger's record written while an activity runs gets its activity's fields too. With
tracing on, `trace_id` and `span_id` tie a line to its trace.

No personal data: needflow's own log calls carry ids, keys and counts only (a customer's
name, address, phone or a reason never goes into a log call); on top of that every
formatted line here passes `redact`, which replaces e-mail addresses and phone numbers
(an SMTP server's reply quotes the recipient, a query string may hold `to=ADDRESS`, a
database error quotes what it could not write).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace
from temporalio import activity, workflow

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A number written as a phone number: international (+ or %2B, then 7 digits or more,
# spaces, dots, dashes or parentheses between), or North American 555-010-0199 / (555) 010-0199.
_PHONE = re.compile(
    r"(?:\+|%2B)\d(?:[\d\s().-]|%20){5,}\d|\(\d{3}\)\s?\d{3}[\s.-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every e-mail address and phone number replaced by `[email]`, `[phone]`."""
    return _PHONE.sub("[phone]", _EMAIL.sub("[email]", text))


#: The SDK's `extra` dictionaries (workflow.logger, activity.logger) and the fields taken from them.
_SDK_EXTRA = ("temporal_workflow", "temporal_activity")
_FIELDS = (
    "workflow_id",
    "run_id",
    "workflow_run_id",
    "workflow_type",
    "activity_type",
    "activity_id",
    "attempt",
    "update_name",
    "update_id",
    "task_queue",
    "namespace",
)


def temporal_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The workflow and activity the record was written in, from the SDK's `extra`, or
    from the running activity (or workflow) when a plain logger wrote it."""
    found: dict[str, Any] = {}
    for key in _SDK_EXTRA:
        details = getattr(record, key, None)
        if isinstance(details, dict):
            found.update(details)
    if not found:
        try:
            if activity.in_activity():
                a = activity.info()
                found.update(
                    workflow_id=a.workflow_id,
                    run_id=a.workflow_run_id,
                    workflow_type=a.workflow_type,
                    activity_type=a.activity_type,
                    activity_id=a.activity_id,
                    attempt=a.attempt,
                    task_queue=a.task_queue,
                )
            elif workflow.in_workflow():
                w = workflow.info()
                found.update(
                    workflow_id=w.workflow_id,
                    run_id=w.run_id,
                    workflow_type=w.workflow_type,
                    task_queue=w.task_queue,
                    namespace=w.namespace,
                )
        except RuntimeError:  # not in the activity's or workflow's own context after all
            pass
    if "workflow_run_id" in found:  # the activity's name for it
        found.setdefault("run_id", found.pop("workflow_run_id"))
    return {k: found[k] for k in _FIELDS if k in found}


def _trace_fields() -> dict[str, str]:
    if workflow.in_workflow():  # a workflow's spans are the interceptor's, made outside its sandbox
        return {}
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module docstring); every string passes `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        out.update(temporal_fields(record))
        out.update(_trace_fields())
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    """The text format, each line passed through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactArgs(logging.Filter):
    """For a logger whose handler is not ours (uvicorn's access log, whose formatter
    reads the record's arguments one by one): redacts the string arguments in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


#: uvicorn's loggers: handled by uvicorn's own handlers unless taken over here.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(fmt: str = "text", *, level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Set up this process's logging in `fmt` (`text` or `json`), once: the root logger
    gets one handler (stderr), replacing any; uvicorn's loggers, when present, send their
    records through it in JSON, and have their arguments redacted in text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT))
    handler.set_name("needflow")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN:
        logger = logging.getLogger(name)
        if fmt == "json":
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.propagate = True
        elif not any(isinstance(f, RedactArgs) for f in logger.filters):
            logger.addFilter(RedactArgs())
    if fmt == "json":
        # The records carry the workflow's and activity's details as fields: the SDK
        # need not append them to each message as well.
        workflow.logger.workflow_info_on_message = False
        activity.logger.activity_info_on_message = False
