"""Customer-health events (`nps.response`, `account.activity`, `mortgage.payment`):
every rule of domain/customer_health.py refuses with its exact error and writes nothing
(no processed event, no signal, and the id stays free); a valid event is recorded once.

The mortgages here are rows written straight to the store (tests/store_rows.py), won on
a chosen day, so payment dates can be checked against it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from domain.customer_health import (
    MortgageFacts,
    activity_problems,
    calendar_date,
    earliest_date,
    latest_date,
    parse_period,
    payment_date_problems,
    payment_mortgage_problems,
)
from store.models import CustomerSignal, ProcessedEvent
from tests.helpers import Api, assert_error, assert_validation_error, count, unique
from tests.store_rows import insert_opportunity

WON_AT = datetime(2026, 9, 10, 15, 0, tzinfo=UTC)
LATER = "2026-10-05T12:00:00+00:00"


# ---------------------------------------------------------------- the rules, pure


def test_parse_period_takes_real_months_only() -> None:
    assert parse_period("2026-09") == date(2026, 9, 1)
    assert parse_period("0001-01") == date(1, 1, 1)
    for bad in ("0000-01", "2026-00", "2026-13", "2026-9", "26-09", "2026-09-01", ""):
        with pytest.raises(ValueError):
            parse_period(bad)


def test_calendar_date_is_the_date_as_written() -> None:
    assert calendar_date("2026-02-28") == date(2026, 2, 28)
    assert calendar_date("2026-11-30T23:00:00-05:00") == date(2026, 11, 30)  # not UTC's Dec 1
    for bad in ("2026-02-29", "2026-13-01", "2026-04-31", "0000-01-01", "yesterday"):
        with pytest.raises(ValueError):
            calendar_date(bad)


def test_an_instant_falls_on_dates_from_utc_minus_12_to_plus_14() -> None:
    at = datetime(2026, 9, 10, 11, 0, tzinfo=UTC)
    assert (earliest_date(at), latest_date(at)) == (date(2026, 9, 9), date(2026, 9, 11))
    at = datetime(2026, 9, 10, 9, 59, tzinfo=UTC)
    assert (earliest_date(at), latest_date(at)) == (date(2026, 9, 9), date(2026, 9, 10))


def test_activity_period_not_in_the_future() -> None:
    now = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    ok = {"period": "2026-11", "transactions": 0}
    assert activity_problems(ok, occurred_at=now, now=now) == []
    # At 2026-11-30 10:00 UTC it is already December 1st in Kiritimati (UTC+14).
    edge = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert activity_problems({"period": "2026-12"}, occurred_at=edge, now=edge) == []
    assert activity_problems({"period": "2026-12"}, occurred_at=now, now=now)[0][0] == "data.period"
    # Not after the month of the event, even when that month is long past now.
    sent = datetime(2026, 9, 15, tzinfo=UTC)
    assert activity_problems({"period": "2026-10"}, occurred_at=sent, now=now)[0][0] == "data.period"
    # Nor after now, whatever the event says of its own time.
    assert activity_problems({"period": "2027-01"}, occurred_at=datetime(2027, 2, 1, tzinfo=UTC), now=now) != []


def test_payment_rules() -> None:
    now = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    data = {"opportunity_id": "o1", "due_date": "2026-09-30", "paid_date": "2026-10-02"}  # late: allowed
    assert payment_date_problems(data, occurred_at=now, now=now) == []
    both = payment_date_problems(
        {**data, "due_date": "2026-02-30", "paid_date": "2026-13-01"}, occurred_at=now, now=now
    )
    assert [f for f, _ in both] == ["data.due_date", "data.paid_date"]
    future = payment_date_problems({**data, "paid_date": "2026-11-28"}, occurred_at=now, now=now)
    assert [f for f, _ in future] == ["data.paid_date"]

    won = MortgageFacts("o1", "c1", "mortgage", "won", WON_AT - timedelta(days=30), WON_AT)
    assert payment_mortgage_problems(data, customer_id="c1", mortgage=won) == []
    # The day it was won counts from its earliest date anywhere (Sept 10 15:00 UTC is Sept 10 at UTC-12).
    on_the_day = {**data, "due_date": "2026-09-10", "paid_date": "2026-09-10"}
    assert payment_mortgage_problems(on_the_day, customer_id="c1", mortgage=won) == []
    before = {**data, "due_date": "2026-09-09", "paid_date": "2026-09-01"}
    assert [f for f, _ in payment_mortgage_problems(before, customer_id="c1", mortgage=won)] == [
        "data.due_date",
        "data.paid_date",
    ]
    for facts in (
        None,
        replace(won, customer_id="c2"),
        replace(won, product="checking"),
        replace(won, status="open", closed_at=None),
        replace(won, status="lost"),
    ):
        assert [f for f, _ in payment_mortgage_problems(data, customer_id="c1", mortgage=facts)] == [
            "data.opportunity_id"
        ]


# ---------------------------------------------------------------- through the API


@dataclass
class Her:
    """A customer with a won mortgage (won on WON_AT), an open mortgage, a won checking
    account, and another customer's won mortgage."""

    customer_id: str
    mortgage: str
    open_mortgage: str
    checking: str
    others_mortgage: str


async def _customer(api: Api, owner_id: str) -> tuple[str, str]:
    customer = (await api.post("/v1/customers", {"name": unique("Holly Health")}, expect=201)).json()
    need = (
        await api.post(
            f"/v1/customers/{customer['id']}/needs",
            {"kind": "buy_home", "description": "A home", "recorded_by": owner_id},
            expect=201,
        )
    ).json()
    return customer["id"], need["id"]


@pytest.fixture
async def her(api: Api, db: Engine) -> Her:
    owner = await api.employee(name="Hal", email=f"{unique('hal')}@bank.example")
    customer_id, need_id = await _customer(api, owner["id"])
    other_id, other_need = await _customer(api, owner["id"])
    opened = WON_AT - timedelta(days=40)

    def opp(cid: str, nid: str, **kw: object) -> str:
        return insert_opportunity(db, customer_id=cid, need_id=nid, owner_id=owner["id"], opened_at=opened, **kw)["id"]  # type: ignore[arg-type]

    return Her(
        customer_id=customer_id,
        mortgage=opp(customer_id, need_id, closed_at=WON_AT, amount="300000.00"),
        open_mortgage=opp(customer_id, need_id, status="open"),
        checking=opp(customer_id, need_id, product="checking", closed_at=WON_AT),
        others_mortgage=opp(other_id, other_need, closed_at=WON_AT, amount="200000.00"),
    )


def event(type_: str, customer_id: str, data: dict, *, event_id: str | None = None, at: str = LATER) -> dict:
    return {
        "id": event_id or unique("evt-health"),
        "type": type_,
        "occurred_at": at,
        "customer_id": customer_id,
        "data": data,
    }


def nothing_written(db: Engine, event_id: str) -> bool:
    return (
        count(db, ProcessedEvent, ProcessedEvent.id == event_id) == 0
        and count(db, CustomerSignal, CustomerSignal.event_id == event_id) == 0
    )


def _next_month() -> str:
    today = datetime.now(UTC).date()
    first = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    if first <= latest_date(datetime.now(UTC)):  # already next month in UTC+14: the one after
        first = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return f"{first:%Y-%m}"


def _in_two_days() -> str:
    return f"{datetime.now(UTC).date() + timedelta(days=2):%Y-%m-%d}"


PAYMENT = {"due_date": "2026-09-30", "paid_date": "2026-10-02", "amount": "1850.00"}

#: (case, type, data given the fixture, occurred_at, the field the 422 names)
REFUSED: list[tuple[str, str, Callable[[Her], dict], str, str]] = [
    ("score above 10", "nps.response", lambda h: {"score": 11}, LATER, "data.score"),
    ("score below 0", "nps.response", lambda h: {"score": -1}, LATER, "data.score"),
    ("score not a number", "nps.response", lambda h: {"score": "great"}, LATER, "data.score"),
    ("month 13", "account.activity", lambda h: {"product": "checking", "period": "2026-13", "transactions": 1}, LATER, "data.period"),
    ("year 0", "account.activity", lambda h: {"product": "checking", "period": "0000-05", "transactions": 1}, LATER, "data.period"),
    ("period in the future", "account.activity", lambda h: {"product": "checking", "period": _next_month(), "transactions": 1}, datetime.now(UTC).isoformat(), "data.period"),
    ("period after the event", "account.activity", lambda h: {"product": "checking", "period": "2026-10", "transactions": 1}, "2026-09-20T12:00:00+00:00", "data.period"),
    ("negative transactions", "account.activity", lambda h: {"product": "checking", "period": "2026-09", "transactions": -1}, LATER, "data.transactions"),
    ("unknown product", "account.activity", lambda h: {"product": "gold", "period": "2026-09", "transactions": 1}, LATER, "data.product"),
    ("no such due date", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "due_date": "2026-09-31"}, LATER, "data.due_date"),
    ("no such paid date", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "paid_date": "2026-02-29"}, LATER, "data.paid_date"),
    ("due date not a date", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "due_date": "soon"}, LATER, "data.due_date"),
    ("paid in the future", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "paid_date": _in_two_days()}, datetime.now(UTC).isoformat(), "data.paid_date"),
    ("paid after the event", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage}, "2026-09-30T08:00:00+00:00", "data.paid_date"),
    ("no opportunity named", "mortgage.payment", lambda h: PAYMENT, LATER, "data.opportunity_id"),
    ("unknown opportunity", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": "opp_nope"}, LATER, "data.opportunity_id"),
    ("another customer's mortgage", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.others_mortgage}, LATER, "data.opportunity_id"),
    ("her checking account", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.checking}, LATER, "data.opportunity_id"),
    ("her mortgage not yet won", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.open_mortgage}, LATER, "data.opportunity_id"),
    ("due before it was won", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "due_date": "2026-09-01"}, LATER, "data.due_date"),
    ("paid before it was won", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "paid_date": "2026-09-08"}, LATER, "data.paid_date"),
    ("amount zero", "mortgage.payment", lambda h: {**PAYMENT, "opportunity_id": h.mortgage, "amount": "0"}, LATER, "data.amount"),
]  # fmt: skip


@pytest.mark.parametrize(("type_", "data", "at", "field"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_a_refused_health_event_names_the_field_and_writes_nothing(
    api: Api, db: Engine, her: Her, type_: str, data: Callable[[Her], dict], at: str, field: str
) -> None:
    body = event(type_, her.customer_id, data(her), at=at)
    err = assert_validation_error(await api.post("/v1/events", body), field)
    named = [e["field"] for e in err["details"]["errors"]]
    assert named and all(f == field or f.startswith(field + ".") for f in named), err
    assert nothing_written(db, body["id"])


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("nps.response", {"score": 9}),
        ("account.activity", {"product": "checking", "period": "2026-09", "transactions": 4}),
        ("mortgage.payment", {**PAYMENT, "opportunity_id": "opp_whatever"}),
    ],
)
async def test_a_health_event_about_an_unknown_customer_is_404(api: Api, db: Engine, type_: str, data: dict) -> None:
    body = event(type_, "cus_nobody_here", data)
    err = assert_error(await api.post("/v1/events", body), 404, "not_found")
    assert err["details"] == {"id": "cus_nobody_here"}
    assert nothing_written(db, body["id"])


async def test_valid_health_events_are_recorded_once(api: Api, db: Engine, her: Her) -> None:
    cases = [
        ("nps.response", {"score": 0, "comment": "Slow"}),
        ("nps.response", {"score": 10}),
        ("account.activity", {"product": "checking", "period": "2026-09", "transactions": 0}),
        ("account.activity", {"product": "savings", "period": "2026-10", "transactions": 12}),
        # Late (paid after due), as a time with an offset: counted by its calendar date as written.
        ("mortgage.payment", {**PAYMENT, "opportunity_id": her.mortgage, "paid_date": "2026-10-02T23:30:00-05:00"}),
        # Early, on the day it was won.
        ("mortgage.payment", {**PAYMENT, "opportunity_id": her.mortgage, "due_date": "2026-10-01", "paid_date": "2026-09-10"}),
    ]  # fmt: skip
    for type_, data in cases:
        body = event(type_, her.customer_id, data)
        first = (await api.post("/v1/events", body, expect=202)).json()
        assert first == {"id": body["id"], "result": "applied", "customer_id": her.customer_id, "opportunity": None}
        again = (await api.post("/v1/events", body, expect=202)).json()
        assert again["result"] == "duplicate"
        assert count(db, ProcessedEvent, ProcessedEvent.id == body["id"]) == 1
        with db.connect() as conn:
            row = conn.execute(select(CustomerSignal).where(CustomerSignal.event_id == body["id"])).one()
        assert (row.customer_id, row.type, row.occurred_at) == (her.customer_id, type_, datetime.fromisoformat(LATER))
        assert row.data == data
    assert count(db, CustomerSignal, CustomerSignal.customer_id == her.customer_id) == len(cases)


async def test_a_refused_event_leaves_its_id_free_and_a_reused_id_is_still_a_conflict(
    api: Api, db: Engine, her: Her
) -> None:
    event_id = unique("evt-health")
    wrong = event("mortgage.payment", her.customer_id, {**PAYMENT, "opportunity_id": her.checking}, event_id=event_id)
    assert_validation_error(await api.post("/v1/events", wrong), "data.opportunity_id")
    right = event("mortgage.payment", her.customer_id, {**PAYMENT, "opportunity_id": her.mortgage}, event_id=event_id)
    assert (await api.post("/v1/events", right, expect=202)).json()["result"] == "applied"
    # The same id for another payment: a conflict, as for every event.
    other = {**right, "data": {**right["data"], "amount": "99.00"}}
    assert_error(await api.post("/v1/events", other), 409, "conflict")
    with db.connect() as conn:
        assert conn.scalar(select(CustomerSignal.data).where(CustomerSignal.event_id == event_id)) == right["data"]


async def test_concurrent_different_events_with_one_id_are_one_applied_and_conflicts(
    api: Api, db: Engine, her: Her
) -> None:
    """Racing copies of an id with different bodies: one is recorded, the others hear
    `conflict`, never a silent `duplicate`."""
    event_id = unique("evt-health-race")
    bodies = [event("nps.response", her.customer_id, {"score": s}, event_id=event_id) for s in (3, 8)]
    answers = await asyncio.gather(*(api.post("/v1/events", b) for b in bodies))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409], [a.text for a in answers]
    applied = next(a for a in answers if a.status_code == 202)
    assert applied.json()["result"] == "applied"
    assert_error(next(a for a in answers if a.status_code == 409), 409, "conflict")
    assert count(db, CustomerSignal, CustomerSignal.event_id == event_id) == 1
