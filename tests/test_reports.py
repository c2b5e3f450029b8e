"""Reports (scope reports:read): referral analytics by referrer and the pipeline, as SQL
over the store. The session database is shared by every test, so each test builds its
data in a territory of its own, reads its own referrers' rows, and checks global counts
as differences between a report read before and one read after."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from store.db import make_sync_engine
from store.reports import AGE_BANDS, BAND_NAMES, TOP_AGE_BAND, age_band
from tests.helpers import Api, assert_error, assert_validation_error, territory
from tests.store_rows import insert_referral

REFERRERS = "/v1/reports/referrers"
PIPELINE = "/v1/reports/pipeline"


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def past_referral(
    db: Engine,
    *,
    referrer: tuple[str, str],
    created_ago: timedelta,
    status: str = "unassigned",
    decided_ago: timedelta | None = None,
) -> str:
    """A referral made `created_ago` ago (decided `decided_ago` ago), in the store."""
    now = datetime.now(UTC)
    return insert_referral(
        db,
        referrer_type=referrer[0],
        referrer_id=referrer[1],
        created_at=now - created_ago,
        status=status,
        decided_at=now - decided_ago if decided_ago is not None else None,
    )


async def referrers(api: Api, **params: Any) -> dict:
    query = "&".join(f"{k}={v}" for k, v in {"limit": 1000, **params}.items())
    return (await api.get(f"{REFERRERS}?{query}")).json()


def rows(report: dict, referrer_id: str) -> list[dict]:
    return [i for i in report["items"] if i["referrer"]["id"] == referrer_id]


def row(report: dict, referrer_id: str) -> dict:
    """The report's one row of this referrer."""
    found = rows(report, referrer_id)
    assert len(found) == 1, f"{len(found)} rows for {referrer_id}: {found}"
    return found[0]


def by_hand(converted: int, decided: int, report: dict) -> int:
    """The referrer score of domain/scoring.py, by hand, against the bank totals the report shows:
    the bank rate is converted / decided, or the 30 % prior when the bank has decided nothing."""
    bank = report["bank"]
    bank_rate = bank["converted"] / bank["decided"] if bank["decided"] else 0.3
    return math.floor(100 * (converted + 5 * bank_rate) / (decided + 5) + 0.5)


async def decide(api: Api, ref: dict, actor: dict, *, convert: bool) -> None:
    if convert:
        await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": actor["id"]}, expect=200)
        await api.post(
            f"/v1/referrals/{ref['id']}/convert",
            {"actor_id": actor["id"], "need": {"kind": "buy_home", "description": "A home"}},
            expect=200,
        )
    else:
        await api.post(
            f"/v1/referrals/{ref['id']}/close", {"actor_id": actor["id"], "reason": "not moving"}, expect=200
        )


async def test_referrer_rows_counts_score_and_order(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob, kevin = people["ryan"], people["bob"], people["kevin"]
    good = await api.employee(
        role="advisor",
        lob="wealth",
        name="Good Referrer",
        email=f"good.{state}@bank.example",
        products=[],
        states=[state],
    )
    before = await referrers(api)

    # Good (wealth): 2 converted and 1 closed of 4, all to Bob (mortgage): every one cross-LOB.
    made = [await api.refer(good, state, name=f"Prospect {i}") for i in range(4)]
    await decide(api, made[0], bob, convert=True)
    await decide(api, made[1], bob, convert=True)
    await decide(api, made[2], bob, convert=False)
    # Kevin (mortgage) -> Bob (mortgage): same line of business; closed, none converted.
    await decide(api, await api.refer(kevin, state, name="From Kevin"), bob, convert=False)
    # Ryan (wealth): one to Bob (cross-LOB), one nobody sells here (unassigned: not cross-LOB).
    await api.refer(ryan, state, name="From Ryan")
    await api.refer(ryan, state, name="Insured", interest="insurance")

    report = await referrers(api)
    assert report["window_days"] == 90  # settings.referrer_window_days
    bank = report["bank"]
    assert bank["referrals"] - before["bank"]["referrals"] == 7
    assert bank["decided"] - before["bank"]["decided"] == 4
    assert bank["converted"] - before["bank"]["converted"] == 2
    assert bank["conversion_rate"] == pytest.approx(bank["converted"] / bank["decided"])

    g = row(report, good["id"])
    assert g["referrer"] == {"type": "employee", "id": good["id"], "name": "Good Referrer"}
    assert (g["referrals"], g["decided"], g["converted"], g["cross_lob"]) == (4, 3, 2, 4)
    assert g["conversion_rate"] == pytest.approx(2 / 3)
    # The documented formula (domain/scoring.py), by hand, from the bank totals reported.
    bank_rate = bank["converted"] / bank["decided"]
    assert g["referrer_score"] == math.floor(100 * (2 + 5 * bank_rate) / (3 + 5) + 0.5)
    # ... and the same score the referral itself shows.
    shown = (await api.get(f"/v1/referrals/{made[3]['id']}")).json()["referrer_score"]
    assert shown == g["referrer_score"]

    k = row(report, kevin["id"])
    assert k["referrer"] == {"type": "employee", "id": kevin["id"], "name": "Kevin"}
    assert (k["referrals"], k["decided"], k["converted"], k["cross_lob"], k["conversion_rate"]) == (1, 1, 0, 0, 0.0)
    assert k["referrer_score"] == math.floor(100 * (0 + 5 * bank_rate) / (1 + 5) + 0.5)

    r = row(report, ryan["id"])
    assert r["referrer"] == {"type": "employee", "id": ryan["id"], "name": "Ryan"}
    assert (r["referrals"], r["decided"], r["converted"], r["cross_lob"], r["conversion_rate"]) == (2, 0, 0, 1, None)
    assert r["referrer_score"] == math.floor(100 * bank_rate + 0.5)

    # Top referrers first: a referrer with conversions ranks above one without.
    ids = [i["referrer"]["id"] for i in report["items"]]
    assert ids.index(good["id"]) < ids.index(kevin["id"])
    keys = [(-i["referrer_score"], -i["converted"], -i["referrals"], i["referrer"]["id"]) for i in report["items"]]
    assert keys == sorted(keys)
    # `limit` keeps the top of that order.
    top = await referrers(api, limit=2)
    assert top["items"] == report["items"][:2]
    assert rows(report, bob["id"]) == []  # Bob made no referral


async def test_window_days_leaves_older_referrals_out(api: Api, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    partner = f"partner-{state}"
    dormant = f"dormant-{state}"
    recent_before = await referrers(api, window_days=90)
    year_before = await referrers(api, window_days=365)
    # Made and converted long ago, then a new (open) one through the API.
    past_referral(
        db,
        referrer=("partner", partner),
        status="converted",
        created_ago=timedelta(days=200),
        decided_ago=timedelta(days=150),
    )
    past_referral(
        db,
        referrer=("partner", dormant),
        status="closed",
        created_ago=timedelta(days=200),
        decided_ago=timedelta(days=150),
    )
    body = {
        "referrer": {"type": "partner", "id": partner},
        "prospect": {"name": "Partner Lead", "city": "San Francisco", "state": state},
        "expressed_interest": "mortgage",
    }
    fresh = (await api.post("/v1/referrals", body, expect=201)).json()
    assert fresh["assignee_id"] == people["bob"]["id"]

    recent = await referrers(api, window_days=90)
    assert recent["window_days"] == 90
    p = row(recent, partner)
    assert p["referrer"] == {"type": "partner", "id": partner, "name": None}
    assert (p["referrals"], p["decided"], p["converted"], p["conversion_rate"], p["cross_lob"]) == (1, 0, 0, None, 0)
    assert p["referrer_score"] == by_hand(0, 0, recent)
    assert rows(recent, dormant) == []  # nothing made within 90 days

    year = await referrers(api, window_days=365)
    assert year["window_days"] == 365
    p = row(year, partner)
    assert (p["referrals"], p["decided"], p["converted"], p["conversion_rate"]) == (2, 1, 1, 1.0)
    assert p["referrer_score"] == by_hand(1, 1, year)
    d = row(year, dormant)
    assert (d["referrals"], d["decided"], d["converted"], d["conversion_rate"]) == (1, 1, 0, 0.0)
    assert d["referrer_score"] == by_hand(0, 1, year)

    # The bank row: the fresh referral counts in both windows; the two from 200 days ago
    # (decided 150 days ago, one converted) only in the year's.
    def grew(after: dict, before: dict) -> tuple[int, int, int]:
        return tuple(after["bank"][k] - before["bank"][k] for k in ("referrals", "decided", "converted"))

    assert grew(recent, recent_before) == (1, 0, 0)
    assert grew(year, year_before) == (3, 2, 1)


def test_age_bands_are_documented_and_half_open() -> None:
    assert BAND_NAMES == ("<1d", "1-7d", "7-30d", ">=30d") and TOP_AGE_BAND == ">=30d"
    assert [bound for bound, _ in AGE_BANDS] == [timedelta(days=1), timedelta(days=7), timedelta(days=30)]
    tick = timedelta(microseconds=1)
    assert age_band(-timedelta(hours=1)) == age_band(timedelta(0)) == "<1d"
    assert age_band(timedelta(days=1) - tick) == "<1d" and age_band(timedelta(days=1)) == "1-7d"
    assert age_band(timedelta(days=7) - tick) == "1-7d" and age_band(timedelta(days=7)) == "7-30d"
    assert age_band(timedelta(days=30) - tick) == "7-30d" and age_band(timedelta(days=30)) == ">=30d"


def _cells(report: dict) -> dict[tuple[str, str], int]:
    return {(c["status"], c["band"]): c["count"] for c in report["by_status_and_age"]}


async def test_pipeline_referrals_by_status_and_age(api: Api, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    before = (await api.get(PIPELINE)).json()["referrals"]

    await api.refer(ryan, state, name="Assigned")
    accepted = await api.refer(ryan, state, name="Accepted")
    await api.post(f"/v1/referrals/{accepted['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    await decide(api, await api.refer(ryan, state, name="Closed"), bob, convert=False)
    await api.refer(ryan, state, name="Queued", interest="insurance")  # nobody sells it: unassigned
    waiting = ("partner", f"old-{state}")
    minutes = timedelta(minutes=5)
    past_referral(db, referrer=waiting, created_ago=timedelta(days=1) + minutes)  # 1-7d
    past_referral(db, referrer=waiting, created_ago=timedelta(days=7) - minutes)  # 1-7d
    past_referral(db, referrer=waiting, created_ago=timedelta(days=7) + minutes)  # 7-30d
    past_referral(db, referrer=waiting, created_ago=timedelta(days=30) + minutes)  # >=30d
    oldest = past_referral(db, referrer=waiting, created_ago=timedelta(days=1000))  # >=30d
    # Decided long ago: by status only, never by age.
    past_referral(
        db, referrer=waiting, status="closed", created_ago=timedelta(days=1000), decided_ago=timedelta(days=999)
    )

    after = (await api.get(PIPELINE)).json()["referrals"]
    delta = {
        s: after["by_status"].get(s, 0) - before["by_status"].get(s, 0)
        for s in ("assigned", "unassigned", "accepted", "converted", "closed")
    }
    assert delta == {"assigned": 1, "unassigned": 6, "accepted": 1, "converted": 0, "closed": 2}

    assert [b["band"] for b in after["by_age_band"]] == ["<1d", "1-7d", "7-30d", ">=30d"]
    band_delta = {
        a["band"]: a["open"] - b["open"] for a, b in zip(after["by_age_band"], before["by_age_band"], strict=False)
    }
    assert band_delta == {"<1d": 3, "1-7d": 2, "7-30d": 1, ">=30d": 2}
    assert after["open_total"] - before["open_total"] == 8
    assert after["open_total"] == sum(b["open"] for b in after["by_age_band"])
    assert after["open_total"] == sum(after["by_status"][s] for s in ("assigned", "unassigned", "accepted"))

    cb, ca = _cells(before), _cells(after)
    assert set(ca) == {(s, b) for s in ("assigned", "unassigned", "accepted") for b in BAND_NAMES}
    changed = {cell: ca[cell] - cb.get(cell, 0) for cell in ca if ca[cell] != cb.get(cell, 0)}
    assert changed == {
        ("assigned", "<1d"): 1,
        ("accepted", "<1d"): 1,
        ("unassigned", "<1d"): 1,
        ("unassigned", "1-7d"): 2,
        ("unassigned", "7-30d"): 1,
        ("unassigned", ">=30d"): 2,
    }

    o = after["oldest_open"]
    assert (o["id"], o["status"], o["assignee_id"]) == (oldest, "unassigned", None)
    assert o["age_hours"] == pytest.approx(1000 * 24, abs=0.5)


async def test_pipeline_opportunities_by_product_and_stage(api: Api) -> None:
    def cells(report: dict) -> dict[tuple[str, str], tuple[int, Decimal]]:
        return {
            (c["product"], c["stage"]): (c["count"], Decimal(c["amount"]))
            for c in report["opportunities"]["by_product_and_stage"]
        }

    before = (await api.get(PIPELINE)).json()
    owner = await api.employee(name="Olga", email=f"olga.{uuid.uuid4().hex[:6]}@bank.example")
    await api.opportunity(amount="500000.00", owner=owner)
    lost = await api.opportunity(amount="250000.50", owner=owner)
    await api.post(
        f"/v1/opportunities/{lost['id']}/close-lost", {"actor_id": owner["id"], "reason": "rates"}, expect=200
    )
    await api.opportunity(product="checking", amount=None, owner=owner)
    after = (await api.get(PIPELINE)).json()

    for c in after["opportunities"]["by_product_and_stage"]:
        assert isinstance(c["amount"], str) and Decimal(c["amount"]) == Decimal(c["amount"]).quantize(Decimal("0.01"))
    cb, ca = cells(before), cells(after)
    changed = {
        k: (ca[k][0] - cb.get(k, (0, 0))[0], ca[k][1] - cb.get(k, (0, Decimal(0)))[1]) for k in ca if ca[k] != cb.get(k)
    }
    assert changed == {
        ("mortgage", "interested"): (1, Decimal("500000.00")),
        ("mortgage", "closed_lost"): (1, Decimal("250000.50")),
        ("checking", "interested"): (1, Decimal("0")),
    }
    sb, sa = before["opportunities"]["by_status"], after["opportunities"]["by_status"]
    assert {s: sa[s] - sb[s] for s in ("open", "won", "lost")} == {"open": 2, "won": 0, "lost": 1}


async def test_reports_need_the_reports_read_scope(api: Api, keys: dict[str, str]) -> None:
    for path in (REFERRERS, PIPELINE):
        await api.get(path, key=keys["reports:read"], expect=200)
        assert_error(await api.get(path, key=keys["crm:write"], expect=None), 403, "forbidden")
        assert_error(await api.request("GET", path), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("window_days=0", "query.window_days"),
        ("window_days=3651", "query.window_days"),
        ("window_days=x", "query.window_days"),
        ("limit=0", "query.limit"),
        ("limit=1001", "query.limit"),
    ],
)
async def test_referrers_report_validates_its_parameters(api: Api, query: str, field: str) -> None:
    assert_validation_error(await api.get(f"{REFERRERS}?{query}", expect=None), field)


async def test_reports_are_in_the_openapi_document(api: Api) -> None:
    doc = (await api.request("GET", "/openapi.json")).json()
    assert "get" in doc["paths"][REFERRERS] and "get" in doc["paths"][PIPELINE]
    params = {p["name"]: p for p in doc["paths"][REFERRERS]["get"]["parameters"]}
    assert {"window_days", "limit"} <= set(params)
    schemas = doc["components"]["schemas"]
    assert {"ReferrerReportOut", "PipelineReportOut"} <= set(schemas)
    amount = schemas["ProductStageCount"]["properties"]["amount"]
    assert amount.get("type") == "string"
