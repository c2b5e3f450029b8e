"""The e-mail sender's records and rules: what `workflows.mail.MailSenderWorkflow` asks its
activity (`activities.mail.MailSender`) to do, the activity's name, and the delivery rules
every part agrees on. Pure: the workflow imports this, never the store.

An outbox message (one row per recipient) is in one of these states:

- `pending`: waiting for its next attempt (`next_attempt_at`);
- `sending`: a sender has claimed it (an attempt id and a lease) and is talking to SMTP;
- `sent`: the server accepted it (250 after the message's content);
- `failed`: a permanent refusal (an SMTP 5xx reply for it), or `max_attempts` temporary
  failures (4xx replies, a connection lost before its content was sent); `last_error`
  holds the last reply or error;
- `unknown`: its content went out and no reply came (a timeout or a dropped connection
  after DATA), or the sender stopped while it was `sending` (its lease expired). The
  server may have accepted it, so it is never sent again automatically: at most once per
  recipient. `last_error` says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SEND_DUE = "mail.send_due"

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"

MailStatus = Literal["pending", "sending", "sent", "failed", "unknown"]
#: Statuses a message is still on its way in (queue depth counts these).
QUEUED = (PENDING, SENDING)


def retry_delay(attempt: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait after the `attempt`-th failed attempt (1, 2, …): `base_seconds`,
    doubling each time, never more than `max_seconds`. The same rule spaces the sender's
    reconnections while the SMTP server is unreachable (`attempt` = failures in a row)."""
    return min(max_seconds, base_seconds * 2 ** max(0, attempt - 1))


class MailSenderInput(BaseModel):
    """The sender's workflow input (carried over its continue-as-new): how many rounds in a
    row found the SMTP server unreachable, so its back-off goes on growing."""

    outage_streak: int = 0
    #: Rounds per run before it continues as new (workflows/mail.py): 200 keeps a run's
    #: history far below Temporal's limits; a test sets a few to see it carry on.
    rounds_per_run: int = Field(default=200, ge=1)


class SendDue(BaseModel):
    """One round: send the messages due now, in one batch."""

    outage_streak: int = 0


class SendReport(BaseModel):
    """What a round did, and when the next should run."""

    sent: int = 0
    failed: int = 0
    retrying: int = 0
    unknown: int = 0
    #: Set when the SMTP server could not be reached (or refused the session: TLS, login,
    #: sender): the error, and no message was touched; the sender waits `wait_seconds`.
    smtp_down: str | None = None
    #: The batch stopped at its size or time limit with more due: run again at once.
    more: bool = False
    #: Seconds until the next round (the next message due, or the sender's idle poll).
    wait_seconds: float = 60.0
