"""What the workflows record as they go: a metric and one log line each.

Called from workflow code only. Metrics go through `workflow.metric_meter()`, which
records nothing while a workflow replays its history, so a worker restart or a cache
eviction never counts a transition twice; the line goes through `workflow.logger`
(not during replay either), which adds the workflow's id, run id and type (and the
update's name and id) to the record. Both carry keys only: a stage, an SLA kind, a
provider — never a customer's name, address, phone or a reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import workflow

from observability import names


def stage_entered(product: str, stage: str, trigger: str) -> None:
    """An opportunity of `product` entered `stage` (a checkpoint)."""
    counter = workflow.metric_meter().create_counter(
        names.STAGE_TRANSITIONS, "Opportunity checkpoints: stages entered", "1"
    )
    counter.add(1, {"product": product, "stage": stage, "trigger": trigger})
    workflow.logger.info("stage %s entered (%s)", stage, trigger)


def sla_breached(kind: str, product: str) -> None:
    """A referral's SLA fell due: `lapse`, `reminder` or `escalation`."""
    counter = workflow.metric_meter().create_counter(names.SLA_BREACHES, "Referral SLAs that fell due", "1")
    counter.add(1, {"kind": kind, "product": product})
    workflow.logger.info("referral SLA fell due: %s", kind)


def signature_completed(product: str, provider: str, sent_at: datetime, completed_at: datetime) -> None:
    """A signature request sent at `sent_at` was completed at `completed_at` (the
    provider's time; one without a zone is taken as UTC)."""
    if completed_at.tzinfo is None:
        completed_at = completed_at.replace(tzinfo=UTC)
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    seconds = max(0.0, (completed_at - sent_at).total_seconds())
    histogram = workflow.metric_meter().create_histogram_float(
        names.SIGNATURE_ROUND_TRIP, "Signature requests: from sent to completed", "s"
    )
    histogram.record(seconds, {"product": product, "provider": provider})
    workflow.logger.info("signature completed through %s after %.0f s", provider, seconds)
