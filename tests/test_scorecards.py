"""Scorecards (`GET /v1/reports/scorecards?period=YYYY-MM`): a month (September 2026)
seeded for a team of its own, and every figure compared with a value computed by hand
below, from the definitions of spec/API.md — never with the code under test.

Opportunities won and referrals made in the past are rows written straight to the store
(tests/store_rows.py); the customer-health events go through the events API (and its
checks). The session database is shared, so the report is narrowed to this team's
employees (`employee_id=` / `manager_id=`)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine

from store.scorecards import nps_score, share
from tests.helpers import Api, assert_error, assert_validation_error, territory, unique, until
from tests.store_rows import insert_opportunity, insert_referral

SCORECARDS = "/v1/reports/scorecards"
P = "2026-09"


def at(text: str) -> datetime:
    """A UTC instant: `at("2026-09-10 12:00")`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def report(api: Api, **params: object) -> dict:
    query = urlencode(params, doseq=True)
    return (await api.get(f"{SCORECARDS}?{query}")).json()


def by_id(body: dict) -> dict[str, dict]:
    return {i["employee_id"]: i for i in body["items"]}


class Team:
    """Kevin (manager, mortgage) and his reports Dan and Ann (mortgage brokers), Ryan
    (wealth advisor) and Zed (wealth advisor who did nothing), in a territory of their own."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.state = territory()

    async def hire(self, name: str, role: str, lob: str, products: list[str], manager: dict | None) -> dict:
        extra = {"manager_id": manager["id"]} if manager else {}
        return await self.api.employee(
            role=role,
            lob=lob,
            name=name,
            email=f"{unique(name.lower())}@bank.example",
            products=products,
            states=[self.state],
            cities=["San Francisco"],
            **extra,
        )

    async def customer(self, name: str, recorded_by: dict) -> tuple[str, str]:
        customer = (await self.api.post("/v1/customers", {"name": name, "email": "c@example.com"}, expect=201)).json()
        need = (
            await self.api.post(
                f"/v1/customers/{customer['id']}/needs",
                {"kind": "buy_home", "description": "A home", "recorded_by": recorded_by["id"]},
                expect=201,
            )
        ).json()
        return customer["id"], need["id"]

    async def event(self, type_: str, customer_id: str, data: dict, occurred_at: str) -> None:
        body = {
            "id": unique("evt-score"),
            "type": type_,
            "occurred_at": occurred_at,
            "customer_id": customer_id,
            "data": data,
        }
        r = await self.api.post("/v1/events", body, expect=202)
        assert r.json()["result"] == "applied"


async def test_a_month_of_scorecards_equals_the_hand_computed_figures(api: Api, db: Engine) -> None:
    team = Team(api)
    kevin = await team.hire("Kevin", "manager", "mortgage", [], None)
    dan = await team.hire("Dan", "mortgage_broker", "mortgage", ["mortgage"], kevin)
    ann = await team.hire("Ann", "mortgage_broker", "mortgage", ["mortgage"], kevin)
    ryan = await team.hire("Ryan", "advisor", "wealth", ["wealth"], kevin)
    zed = await team.hire("Zed", "advisor", "wealth", ["wealth"], kevin)

    c1, n1 = await team.customer("C1", dan)
    c2, n2 = await team.customer("C2", dan)
    c3, n3 = await team.customer("C3", dan)
    c4, n4 = await team.customer("C4", dan)
    c5, n5 = await team.customer("C5", dan)
    c6, n6 = await team.customer("C6", dan)

    def opp(owner: dict, cid: str, nid: str, **kw: object) -> str:
        return insert_opportunity(
            db, customer_id=cid, need_id=nid, owner_id=owner["id"], opened_at=at("2026-06-01 09:00"), **kw
        )["id"]  # type: ignore[arg-type]

    # Dan's opportunities.
    o1 = opp(dan, c1, n1, closed_at=at("2026-09-10 12:00"), amount="400000.00")  # won in P
    opp(dan, c2, n2, product="checking", closed_at=at("2026-09-30 23:59:59"))  # won in P (last second), no amount
    o3 = opp(dan, c3, n3, closed_at=at("2026-08-15 12:00"), amount="300000.00")  # won before P
    opp(dan, c4, n4, closed_at=at("2026-10-01 00:00"), amount="350000.00")  # won after P (first second of October)
    opp(dan, c5, n5, status="open", amount="100000.00")  # open
    opp(dan, c6, n6, status="lost", closed_at=at("2026-09-05 12:00"), amount="90000.00")  # lost in P
    opp(dan, c1, n1, product="wealth", closed_at=at("2026-09-01 00:00"), amount="50000.50")  # won in P (first second)
    # Ann's: a mortgage for C2 (Dan's customer too).
    a1 = opp(ann, c2, n2, closed_at=at("2026-09-20 12:00"), amount="250000.00")

    # NPS (latest within P per customer counts).
    await team.event("nps.response", c1, {"score": 3}, "2026-09-05T10:00:00+00:00")
    await team.event("nps.response", c1, {"score": 10}, "2026-09-25T10:00:00+00:00")
    await team.event("nps.response", c1, {"score": 0}, "2026-10-02T10:00:00+00:00")  # after P
    await team.event("nps.response", c2, {"score": 2}, "2026-09-01T00:00:00+00:00")
    await team.event("nps.response", c2, {"score": 9}, "2026-09-30T23:59:59+00:00")
    await team.event("nps.response", c3, {"score": 10}, "2026-09-03T10:00:00+00:00")
    await team.event("nps.response", c3, {"score": 4}, "2026-09-28T10:00:00+00:00")
    await team.event("nps.response", c3, {"score": 10}, "2026-08-31T23:59:59+00:00")  # before P
    await team.event("nps.response", c4, {"score": 0}, "2026-09-10T10:00:00+00:00")  # not yet Dan's customer
    await team.event("nps.response", c5, {"score": 1}, "2026-09-10T10:00:00+00:00")  # open: not a customer

    # Account activity for September (and other months, which do not count).
    oct2 = "2026-10-02T06:00:00+00:00"
    await team.event("account.activity", c1, {"product": "checking", "period": P, "transactions": 0}, oct2)
    await team.event("account.activity", c1, {"product": "savings", "period": P, "transactions": 5}, oct2)
    await team.event("account.activity", c2, {"product": "checking", "period": P, "transactions": 0}, oct2)
    await team.event("account.activity", c2, {"product": "checking", "period": "2026-08", "transactions": 12}, oct2)
    await team.event("account.activity", c3, {"product": "checking", "period": P, "transactions": 1}, oct2)
    await team.event("account.activity", c3, {"product": "checking", "period": "2026-10", "transactions": 3}, oct2)
    await team.event("account.activity", c5, {"product": "checking", "period": P, "transactions": 9}, oct2)

    # Mortgage payments: due within P on time (early, on the day), late; due outside P.
    oct5 = "2026-10-05T12:00:00+00:00"

    async def paid(cid: str, oid: str, due: str, paid_on: str) -> None:
        data = {"opportunity_id": oid, "due_date": due, "paid_date": paid_on, "amount": "1850.00"}
        await team.event("mortgage.payment", cid, data, oct5)

    await paid(c3, o3, "2026-09-01", "2026-08-30")  # on time (early)
    await paid(c3, o3, "2026-09-15", "2026-09-15")  # on time (on the day)
    await paid(c3, o3, "2026-09-30", "2026-10-03")  # late
    await paid(c1, o1, "2026-09-30T00:00:00-05:00", "2026-09-30T23:30:00+00:00")  # on time: the same calendar date
    await paid(c3, o3, "2026-10-01", "2026-10-01")  # due after P
    await paid(c3, o3, "2026-08-31", "2026-09-05")  # due before P (late, in August)
    await paid(c2, a1, "2026-09-25", "2026-09-26")  # Ann's: late

    # Referrals.
    def ref(who: dict, created: str, **kw: object) -> str:
        return insert_referral(db, referrer_id=who["id"], created_at=at(created), **kw)  # type: ignore[arg-type]

    w = {"referrer_lob": "wealth"}
    ref(ryan, "2026-09-03 10:00", **w, assignee_id=dan["id"], status="converted", decided_at=at("2026-09-20 10:00"))
    ref(ryan, "2026-09-10 10:00", **w, assignee_id=zed["id"], status="closed", decided_at=at("2026-09-15 10:00"))
    ref(ryan, "2026-08-20 10:00", **w, assignee_id=dan["id"], status="converted", decided_at=at("2026-09-02 10:00"))
    ref(ryan, "2026-09-29 10:00", **w, status="unassigned")
    ref(ryan, "2026-09-25 10:00", **w, assignee_id=ann["id"], status="converted", decided_at=at("2026-10-03 10:00"))
    ref(ryan, "2026-10-01 00:00", **w, assignee_id=dan["id"])
    # Dan: no line of business recorded on the referral (his own counts: mortgage) -> Ryan's wealth: cross.
    ref(dan, "2026-09-30 23:59:59", assignee_id=ryan["id"])
    # Made while Dan was recorded as wealth -> Ann's mortgage: cross, by the line recorded when made.
    ref(dan, "2026-09-15 10:00", **w, assignee_id=ann["id"])
    # A partner whose id happens to be Dan's: not Dan's referral.
    ref(dan, "2026-09-15 10:00", referrer_type="partner", assignee_id=ann["id"])

    team_ids = [kevin["id"], dan["id"], ann["id"], ryan["id"], zed["id"]]
    body = await report(api, period=P, employee_id=team_ids)
    assert body["period"] == P
    # Every employee asked for, by name.
    assert [i["name"] for i in body["items"]] == ["Ann", "Dan", "Kevin", "Ryan", "Zed"]
    items = by_id(body)

    # Dan. Customers: C1, C2, C3 (won by the end of P; C4 was won in October, C5 open, C6 lost).
    # Units: the mortgage of C1, the checking of C2, the wealth of C1 = 3;
    # amount 400000.00 + 0 + 50000.50.
    # NPS: C1 latest 10 (promoter), C2 latest 9 (promoter), C3 latest 4 (detractor):
    # 100 x (2 - 1) / 3 = 33.33... -> 33.3.
    # Active: C1 (savings, 5) and C3 (1) of 3 customers; C2 had 0 in September.
    # Payments due in P on his mortgages: 4, of which 3 on or before the due date.
    # Referrals: made 2 (both cross-line), converted 0.
    assert items[dan["id"]] == {
        "employee_id": dan["id"],
        "name": "Dan",
        "active": True,
        "customers": 3,
        "units": 3,
        "amount": "450000.50",
        "nps": 33.3,
        "active_customer_share": 2 / 3,
        "on_time_payment_share": 0.75,
        "referrals_made": 2,
        "referrals_converted": 0,
        "cross_lob_referrals": 2,
    }
    # Ann: C2 only; one unit of 250000.00; C2's latest 9 -> 100.0; C2 inactive -> 0.0;
    # one payment, late -> 0.0.
    assert items[ann["id"]] == {
        "employee_id": ann["id"],
        "name": "Ann",
        "active": True,
        "customers": 1,
        "units": 1,
        "amount": "250000.00",
        "nps": 100.0,
        "active_customer_share": 0.0,
        "on_time_payment_share": 0.0,
        "referrals_made": 0,
        "referrals_converted": 0,
        "cross_lob_referrals": 0,
    }
    # Ryan: made in P 4 (Sept 3, 10, 29, 25; not Oct 1); converted in P 2 (Sept 20 and
    # Sept 2, made in August; not Oct 3); cross-line 2 (to Dan and to Ann; Zed is wealth,
    # and the unassigned one is not cross-line). No customers: the shares and NPS are null.
    nothing = {
        "active": True,
        "customers": 0,
        "units": 0,
        "amount": "0.00",
        "nps": None,
        "active_customer_share": None,
        "on_time_payment_share": None,
        "referrals_made": 0,
        "referrals_converted": 0,
        "cross_lob_referrals": 0,
    }
    assert items[ryan["id"]] == {
        **nothing,
        "employee_id": ryan["id"],
        "name": "Ryan",
        "referrals_made": 4,
        "referrals_converted": 2,
        "cross_lob_referrals": 2,
    }
    assert items[kevin["id"]] == {**nothing, "employee_id": kevin["id"], "name": "Kevin"}
    assert items[zed["id"]] == {**nothing, "employee_id": zed["id"], "name": "Zed"}

    # The team by its manager: his direct reports, the same items.
    by_manager = await report(api, period=P, manager_id=kevin["id"])
    assert by_manager["items"] == [i for i in body["items"] if i["employee_id"] != kevin["id"]]
    assert by_manager["next"] is None

    # Page by page (each page's figures computed for its own employees): the same items.
    pages, after = [], None
    while True:
        page = await report(api, period=P, manager_id=kevin["id"], limit=1, **({"after": after} if after else {}))
        pages.append(page["items"])
        after = page["next"]
        if after is None:
            break
    # One employee a page, as many pages as employees, and together the same items.
    assert len(by_manager["items"]) >= 2 and len(pages) == len(by_manager["items"])
    assert all(len(p) == 1 for p in pages)
    assert [i for p in pages for i in p] == by_manager["items"]

    # August: Dan's customer C3 (won Aug 15), one unit of 300000.00; nothing else happened then
    # on record except C3's 10 at Aug 31 23:59:59 -> 100.0 and C2's activity (not his customer yet).
    august = by_id(await report(api, period="2026-08", employee_id=[dan["id"], ryan["id"]]))
    assert {k: august[dan["id"]][k] for k in ("customers", "units", "amount", "nps", "active_customer_share")} == {
        "customers": 1,
        "units": 1,
        "amount": "300000.00",
        "nps": 100.0,
        "active_customer_share": 0.0,
    }
    # The payment due Aug 31 (paid Sept 5) is late.
    assert august[dan["id"]]["on_time_payment_share"] == 0.0
    assert (august[ryan["id"]]["referrals_made"], august[ryan["id"]]["referrals_converted"]) == (1, 0)

    # October: C4 is now Dan's customer too (won Oct 1) -> 4 customers, one unit of 350000.00;
    # C1's 0 on Oct 2 -> -100.0; C3 had 3 transactions in October -> 1 of 4 active;
    # the payment due Oct 1 was paid on the day -> 1.0.
    october = by_id(await report(api, period="2026-10", employee_id=[dan["id"], ryan["id"]]))
    assert {k: october[dan["id"]][k] for k in items[dan["id"]] if k not in ("employee_id", "name", "active")} == {
        "customers": 4,
        "units": 1,
        "amount": "350000.00",
        "nps": -100.0,
        "active_customer_share": 0.25,
        "on_time_payment_share": 1.0,
        "referrals_made": 0,
        "referrals_converted": 0,
        "cross_lob_referrals": 0,
    }
    # Ryan in October: made the Oct 1 one; the Sept 25 one converted Oct 3.
    assert (october[ryan["id"]]["referrals_made"], october[ryan["id"]]["referrals_converted"]) == (1, 1)


async def test_this_months_scorecard_follows_the_live_system(api: Api) -> None:
    """A mortgage won through the API and a referral routed through it count in the
    current month (the default period), and a payment on it on its due date is on time."""
    team = Team(api)
    kevin = await team.hire("Kevin", "manager", "mortgage", [], None)
    bea = await team.hire("Bea", "mortgage_broker", "mortgage", ["mortgage"], kevin)
    ray = await team.hire("Ray", "advisor", "wealth", ["wealth"], kevin)

    opp = await api.mortgage_to_approved(owner=bea)
    assert (await api.sign(await api.signing_link(opp))).status_code == 200

    async def won() -> bool:
        return (await api.get(f"/v1/opportunities/{opp['id']}")).json()["status"] == "won"

    await until(won, "the signed mortgage is won")
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    data = {"opportunity_id": opp["id"], "due_date": today, "paid_date": today, "amount": "2100.00"}
    await team.event("mortgage.payment", opp["customer_id"], data, datetime.now(UTC).isoformat())
    referral = await api.refer(ray, team.state)
    assert referral["assignee_id"] == bea["id"]  # the only mortgage broker of the territory

    body = await report(api, employee_id=[bea["id"], ray["id"]])
    assert body["period"] == f"{datetime.now(UTC):%Y-%m}"
    items = by_id(body)
    b = items[bea["id"]]
    assert (b["customers"], b["units"], b["amount"], b["on_time_payment_share"]) == (1, 1, "500000.00", 1.0)
    r = items[ray["id"]]
    assert (r["referrals_made"], r["referrals_converted"], r["cross_lob_referrals"]) == (1, 0, 1)


def test_nps_rounds_half_away_from_zero_and_shares_divide() -> None:
    assert nps_score(0, 0, 0) is None
    assert nps_score(2, 1, 3) == 33.3
    assert nps_score(1, 2, 3) == -33.3
    assert nps_score(1, 0, 16) == 6.3  # 6.25
    assert nps_score(0, 1, 16) == -6.3  # -6.25
    assert nps_score(2, 0, 3) == 66.7
    assert share(0, 0) is None and share(0, 4) == 0.0 and share(3, 4) == 0.75


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "0000-01", "2026-9", "2026-09-01", "Sept", ""])
async def test_a_bad_period_is_422_naming_query_period(api: Api, period: str) -> None:
    assert_validation_error(await api.get(f"{SCORECARDS}?period={period}", expect=None), "query.period")


async def test_scorecards_need_reports_read(api: Api, keys: dict[str, str]) -> None:
    await api.get(f"{SCORECARDS}?period={P}&employee_id=nobody", key=keys["reports:read"], expect=200)
    assert_error(await api.get(SCORECARDS, key=keys["crm:write"], expect=None), 403, "forbidden")
    assert_error(await api.request("GET", SCORECARDS), 401, "unauthenticated")
