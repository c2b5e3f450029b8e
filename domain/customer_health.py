"""Customer-health events (`nps.response`, `account.activity`, `mortgage.payment`): the
rules an event must pass before it is recorded, as pure functions (no I/O, no clock: the
caller passes `now` and what the store knows).

The schema (api/schemas.py) checks the shapes: `score` an integer 0–10, `period` written
`YYYY-MM`, `transactions` an integer >= 0, `due_date` / `paid_date` written `YYYY-MM-DD`
or as a time with an offset, `amount` > 0. The rules here check what a shape cannot:

`account.activity`
  - `period` is a real month (`parse_period`) and not in the future: not after the
    month it already is, at the event's `occurred_at` and now, somewhere on Earth.
    The activity of a month is reported during it or after it, never before.

`mortgage.payment`
  - `due_date` and `paid_date` are real calendar dates. A time given for one counts by
    its calendar date as written, in its own offset (`calendar_date`): a payment due on
    2026-11-30 is due that day wherever it is sent from.
  - `paid_date` is not in the future: not after the date it already is, at the event's
    `occurred_at` and now, somewhere on Earth (a payment is reported once made).
    A `paid_date` after `due_date` is a late payment, and allowed: the scorecard counts it.
  - `opportunity_id` names a mortgage opportunity of the event's customer, and a **won**
    one: only a won mortgage is a loan that has payments.
  - neither `due_date` nor `paid_date` falls before the day the mortgage was won (the
    earliest date anywhere on Earth at `closed_at`, which every decided record has):
    there is no payment on a loan before it was granted.

A date and an instant are compared through the dates the instant falls on around the
world (UTC−12 to UTC+14, `earliest_date` / `latest_date`), so a sender's time zone
never turns a true date into a refusal.

`nps.response`: nothing beyond the schema (the score is 0–10; the comment is free text).

What the scorecards read of a recorded event (`signal_facts`) is kept beside its data as
columns of `customer_signals`, so that a month's figures are index ranges rather than JSON
read out of two million rows (store/scorecards.py).

Every event also needs its customer to exist (404 `not_found`, as for any unknown
subject); api/routers/events.py asks the store and calls these rules. A problem is
(`field`, `message`), the field a dotted path of the request body (`data.period`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from domain.opportunity import closed_at_of

Problem = tuple[str, str]

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
#: The furthest time zones from UTC: an instant falls on these dates somewhere on Earth.
_WEST = timedelta(hours=12)
_EAST = timedelta(hours=14)


def parse_period(text: str) -> date:
    """The first day of the month `YYYY-MM` names; ValueError unless it is a real month
    (month 01–12, year 0001–9999) whose end is a date too (not 9999-12: a report of it
    failed with a 500 computing its `month_bounds`)."""
    m = _PERIOD.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a month written YYYY-MM")
    try:
        first_day = date(int(m[1]), int(m[2]), 1)
        month_bounds(first_day)
    except ValueError:
        raise ValueError(f"{text!r} is not a real month") from None
    return first_day


def month_bounds(first_day: date) -> tuple[datetime, datetime]:
    """The UTC month starting on `first_day`, as [start, end) instants."""
    start = datetime(first_day.year, first_day.month, 1, tzinfo=UTC)
    end = datetime(first_day.year + first_day.month // 12, first_day.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def calendar_date(value: str) -> date:
    """The calendar date of a `YYYY-MM-DD` text, or of a time with an offset as written
    (its first ten characters: `2026-11-30T23:00:00-05:00` is 2026-11-30). ValueError
    unless it is a real date."""
    m = _DATE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a date written YYYY-MM-DD")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise ValueError(f"{value!r} is not a real date") from None


def earliest_date(at: datetime) -> date:
    """The earliest calendar date anywhere on Earth at instant `at` (UTC−12)."""
    return (at.astimezone(UTC) - _WEST).date()


def latest_date(at: datetime) -> date:
    """The latest calendar date anywhere on Earth at instant `at` (UTC+14)."""
    return (at.astimezone(UTC) + _EAST).date()


@dataclass(frozen=True)
class SignalFacts:
    """What the scorecards read of one recorded event (store/scorecards.py)."""

    #: The UTC month (YYYY-MM) the event counts in: an NPS response's, by `occurred_at`;
    #: an account's activity's `period`; a mortgage payment's, by its `due_date`.
    month: str
    score: int | None = None
    transactions: int | None = None
    opportunity_id: str | None = None
    #: A payment's: paid on or before its due date (calendar dates, `calendar_date`).
    on_time: bool | None = None


def signal_facts(event_type: str, data: dict[str, Any], occurred_at: datetime) -> SignalFacts:
    """The scorecards' facts of a recorded (so valid) event of `event_type`."""
    if event_type == "account.activity":
        return SignalFacts(month=parse_period(data["period"]).strftime("%Y-%m"), transactions=int(data["transactions"]))
    if event_type == "mortgage.payment":
        due = calendar_date(data["due_date"])
        return SignalFacts(
            month=due.strftime("%Y-%m"),
            opportunity_id=data["opportunity_id"],
            on_time=calendar_date(data["paid_date"]) <= due,
        )
    if event_type == "nps.response":
        return SignalFacts(month=occurred_at.astimezone(UTC).strftime("%Y-%m"), score=int(data["score"]))
    raise ValueError(f"{event_type!r} is not a customer-health event")


def activity_problems(data: dict[str, Any], *, occurred_at: datetime, now: datetime) -> list[Problem]:
    """`account.activity`: a real month, not in the future (module docstring)."""
    try:
        first = parse_period(data["period"])
    except ValueError as exc:
        return [("data.period", str(exc))]
    today = latest_date(min(occurred_at, now))
    if first > today.replace(day=1):
        return [("data.period", f"{data['period']} is in the future: it is not yet {data['period']} anywhere")]
    return []


@dataclass(frozen=True)
class MortgageFacts:
    """What the store knows of the opportunity a `mortgage.payment` names."""

    id: str
    customer_id: str
    product: str
    status: str
    opened_at: datetime
    closed_at: datetime | None


def payment_date_problems(data: dict[str, Any], *, occurred_at: datetime, now: datetime) -> list[Problem]:
    """`mortgage.payment`: real dates, and paid not in the future (module docstring).
    Needs nothing from the store: checked before the opportunity is looked up."""
    problems: list[Problem] = []
    dates: dict[str, date] = {}
    for field in ("due_date", "paid_date"):
        try:
            dates[field] = calendar_date(data[field])
        except ValueError as exc:
            problems.append((f"data.{field}", str(exc)))
    paid = dates.get("paid_date")
    if paid is not None and paid > latest_date(min(occurred_at, now)):
        problems.append(("data.paid_date", f"{paid} is in the future: a payment is reported once it is made"))
    return problems


def payment_mortgage_problems(
    data: dict[str, Any], *, customer_id: str, mortgage: MortgageFacts | None
) -> list[Problem]:
    """`mortgage.payment`: the opportunity is a won mortgage of this customer, and no date
    falls before the day it was won (module docstring). `mortgage` is None when no
    opportunity has that id. Call after `payment_date_problems` found nothing."""
    ref = data["opportunity_id"]
    if mortgage is None:
        return [("data.opportunity_id", f"no opportunity {ref!r}")]
    if mortgage.customer_id != customer_id:
        return [("data.opportunity_id", f"opportunity {ref!r} is not a mortgage of customer {customer_id!r}")]
    if mortgage.product != "mortgage":
        return [("data.opportunity_id", f"opportunity {ref!r} is a {mortgage.product} opportunity, not a mortgage")]
    if mortgage.status != "won":
        return [
            (
                "data.opportunity_id",
                f"mortgage {ref!r} is {mortgage.status}, not won: only a granted mortgage has payments",
            )
        ]
    won_on = earliest_date(closed_at_of(mortgage.id, mortgage.status, mortgage.closed_at))
    problems: list[Problem] = []
    for field in ("due_date", "paid_date"):
        if (day := calendar_date(data[field])) < won_on:
            problems.append((f"data.{field}", f"{day} is before mortgage {ref!r} was won ({won_on})"))
    return problems
