"""Every metric needflow exports of its own: its name, labels and meaning, in one place.

Where each is served (README "Observability"): the worker's metrics port
(NEEDFLOW_METRICS_PORT) carries what the workflows record, the API's
(NEEDFLOW_API_METRICS_PORT) what the API records; both carry the Temporal SDK's own
metrics (`temporal_*`) beside them. Labels hold ids of kinds, never of people: a product,
a stage key, an event type, an SLA kind — nothing that grows with customers.
"""

from __future__ import annotations

# ---------------------------------------------------------------- API (observability/metrics.py)

#: Counter. Every event `POST /v1/events` answered, by `type` (the event type) and
#: `result`: `applied`, `duplicate`, `refused` (the process forbids it now: 409
#: invalid_transition), `conflict` (its id was used for another event), `invalid` (422),
#: `not_found` (its opportunity or customer is unknown), `error` (anything else).
EVENTS = "needflow_events_total"

#: Gauge. E-mail in the outbox not yet handed to the SMTP server (`pending`, `sending`).
MAIL_QUEUE_DEPTH = "needflow_mail_queue_depth"
#: Gauge. Seconds the oldest of those has waited (0 when there is none).
MAIL_QUEUE_OLDEST_AGE = "needflow_mail_queue_oldest_age_seconds"
#: Gauge. E-mail the sender will not try again and a person must look at, by `status`
#: (`failed`, `unknown`).
MAIL_NEEDS_ATTENTION = "needflow_mail_needs_attention"

# ---------------------------------------------------------------- workflows (observability/workflow_metrics.py)

#: Counter. A checkpoint of an opportunity: it entered `stage` (a stage key, or
#: `closed_lost`) of `product`'s process, `trigger` `manual` or `event`. Opening counts as
#: entering the first stage; an imported opportunity's own checkpoints are not counted.
STAGE_TRANSITIONS = "needflow_stage_transitions_total"

#: Counter. A referral SLA fell due, by `kind` (`lapse`: not accepted in time, re-routed;
#: `reminder`, then `escalation`: accepted but not followed up) and `product` (the
#: expressed interest).
SLA_BREACHES = "needflow_referral_sla_breaches_total"

#: Histogram, seconds. From a signature request sent (the envelope recorded) to its
#: completion (the provider's completion time), by `product` and `provider`.
SIGNATURE_ROUND_TRIP = "needflow_signature_round_trip_seconds"
#: Its buckets: a minute to two weeks (a customer signs in minutes or days).
SIGNATURE_ROUND_TRIP_BUCKETS = [60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, 259200.0, 604800.0, 1209600.0]
