"""Every id of a resource or a workflow needflow makes, in one place: what shape each has
and why. (Secrets are not ids: API keys and signing tokens are made where they are
stored, in store/keys.py and esign/.)

- Resource ids are a prefix and a UUID (`cus_…`, `opp_…`): random for an unkeyed create,
  derived from the caller and its Idempotency-Key for a keyed one, so the same key always
  names the same resource and a retried create finds it instead of making a second.
- What a workflow makes is derived from what it already has, so an activity retried, or
  a workflow replayed, names the same row: the customer, household and need a converted
  referral creates; the opportunity it opens; a consent, by its checkpoint.
- Workflow ids are the resource's id with the workflow's kind in front, so Temporal
  itself refuses a second workflow for the same opportunity or referral.

Pure and deterministic (but `new_id`), so workflows may call these too.
"""

from __future__ import annotations

import uuid

#: The namespace of ids derived from an Idempotency-Key (never change it: ids would move).
_KEYED = uuid.UUID("6f1c1d3e-5d0b-4b8e-9a57-0d7c8f7d2a11")


def new_id(prefix: str) -> str:
    """A fresh resource id, e.g. `cus_3f2a…`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def keyed_id(prefix: str, caller_id: str, key: str) -> str:
    """The resource id of a keyed create: the same caller and key always give the same id."""
    return f"{prefix}_{uuid.uuid5(_KEYED, f'{caller_id}:{key}').hex}"


def resource_id(prefix: str, caller_id: str, key: str | None) -> str:
    """A create's resource id: keyed when the request carries an Idempotency-Key."""
    return keyed_id(prefix, caller_id, key) if key else new_id(prefix)


# ---------------------------------------------------------------- update ids


def keyed_update_id(caller_id: str, key: str | None) -> str | None:
    """A keyed command's Temporal update id, so Temporal de-duplicates a repeat (None:
    unkeyed, Temporal picks one)."""
    return f"{caller_id}:{key}" if key else None


def event_update_id(event_id: str) -> str:
    """A backend event's update id: the event id, so a redelivery is one update."""
    return f"event:{event_id}"


def release_update_id(referral_id: str, employee_id: str, referral_seq: int) -> str:
    """Releasing a referral from a deactivated employee: named by the referral's last
    recorded change, so repeating the deactivation while the referral is still theirs is
    one update, and releasing them again after it came back to them is another."""
    return f"release:{referral_id}:{employee_id}:{referral_seq}"


def owner_change_update_id(opportunity_id: str, seq: int) -> str:
    """An opportunity's `seq`-th owner change (the opportunity numbers them): repeating
    the request that made it is one update."""
    return f"owner-change:{opportunity_id}:{seq}"


# ---------------------------------------------------------------- what a referral creates


def referral_customer_id(referral_id: str) -> str:
    """The customer a converted prospect becomes."""
    return f"cus_{referral_id}"


def referral_household_id(referral_id: str) -> str:
    """The household of that customer."""
    return f"hh_{referral_id}"


def referral_need_id(referral_id: str) -> str:
    """The need a conversion records."""
    return f"need_{referral_id}"


def referral_opportunity_id(referral_id: str) -> str:
    """The opportunity a referral converts into: one per referral, whatever retries."""
    return f"opp_{referral_id.removeprefix('ref_')}"


def consent_id(opportunity_id: str, checkpoint_seq: int) -> str:
    """A consent recorded with the checkpoint numbered `checkpoint_seq`."""
    return f"{opportunity_id}-consent-{checkpoint_seq}"


# ---------------------------------------------------------------- what an import makes

#: The namespace of imported records' ids (never change it: a re-import would duplicate).
_IMPORTED = uuid.UUID("3b8e7f52-0a4c-4d61-9f0e-2c5a9d1b7e44")


def imported_id(prefix: str, source: str, kind: str, external_id: str) -> str:
    """An imported record's id, derived from its source, kind and external id: importing
    the same book again names the same rows, so a re-import finds them and writes nothing."""
    name = "\x1f".join((source, kind, external_id))
    return f"{prefix}_{uuid.uuid5(_IMPORTED, name).hex}"


# ---------------------------------------------------------------- workflow ids


def opportunity_workflow_id(opportunity_id: str) -> str:
    return f"opportunity-{opportunity_id}"


def referral_workflow_id(referral_id: str) -> str:
    return f"referral-{referral_id}"
