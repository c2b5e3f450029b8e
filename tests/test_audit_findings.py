"""The practice audit's kept verdicts (store/audit_findings.py): each write that changes
what the rules read judges again in its own transaction, so the report reads
`audit_findings` — and what it reads is exactly what judging the records on the spot says.

Each test works on an imported book of its own (tests/test_import.py's `book`), then moves
it through the API and the workflows, and after each move compares the report (kept
verdicts) with the report over the same opportunities marked stale (judged on the spot).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update

from config import Settings
from domain.process import load_catalog
from store.audit_findings import refresh_stale
from store.db import make_async_engine, make_session_factory
from store.models import AuditFinding, Opportunity
from tests.helpers import Api, assert_validation_error, count, unique, until_equal
from tests.test_import import book, post_import, t


async def audit(api: Api, **query: str) -> list[tuple[str, str, str, str]]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    items = (await api.get(f"/v1/reports/practice-audit?{q}")).json()["items"]
    return [(i["opportunity_id"], i["rule"], i["owner_id"], i["detail"]) for i in items]


def stale(db: Engine, source: str) -> int:
    return count(db, Opportunity, Opportunity.source == source, Opportunity.audit_stale)


async def assert_kept_is_what_judging_now_says(
    api: Api, db: Engine, settings: Settings, source: str, **query: str
) -> list:
    """The report as kept, then with the book's opportunities marked stale (judged on
    the spot), must be the same; then the stale ones are caught up again."""
    assert stale(db, source) == 0, "a write left its opportunities unjudged"
    kept = await audit(api, **query)
    with db.begin() as conn:
        conn.execute(update(Opportunity).where(Opportunity.source == source).values(audit_stale=True))
    assert await audit(api, **query) == kept
    engine = make_async_engine(settings.resolved_database_url)
    try:
        judged = await refresh_stale(
            make_session_factory(engine), load_catalog(settings.processes_dir), Opportunity.source == source
        )
    finally:
        await engine.dispose()
    assert judged == 4 and stale(db, source) == 0
    assert await audit(api, **query) == kept
    return kept


async def test_an_imported_book_is_judged_once_and_a_branch_consent_judges_again(
    api: Api, db: Engine, settings: Settings
) -> None:
    source = unique("crm")
    ids = (await post_import(api, book(source))).json()["ids"]
    dan, chk = ids["employees"]["E-DAN"], ids["opportunities"]["O-CHK"]
    cy = ids["customers"]["C-CY"]

    before = await assert_kept_is_what_judging_now_says(api, db, settings, source, owner_id=dan)
    assert before == [
        (chk, "consent_missing", dan, f"Won on {t(6)[:10]} 09:00 UTC without any consent of the customer to checking.")
    ]
    with db.connect() as conn:
        kept = conn.execute(select(AuditFinding.opportunity_id, AuditFinding.rule).where(AuditFinding.owner_id == dan))
        assert kept.all() == [(chk, "consent_missing")]

    # A consent given in branch now, after the win: the sale still had none, and the
    # sentence now says when it came.
    consent = {"actor_id": dan, "product": "checking", "channel": "branch", "evidence": {"document_id": "BR-1"}}
    given = (await api.post(f"/v1/customers/{cy}/consents", consent, expect=201)).json()
    after = await assert_kept_is_what_judging_now_says(api, db, settings, source, owner_id=dan)
    granted = given["granted_at"]
    assert [(o, r) for o, r, _, _ in after] == [(chk, "consent_missing")]
    assert after[0][3].startswith(
        f"Won on {t(6)[:10]} 09:00 UTC, but the customer's consent to checking was only granted on "
    )
    assert granted[:10] in after[0][3]


async def test_a_resumed_opportunity_keeps_its_verdict_through_a_stage_change_and_an_owner_change(
    api: Api, db: Engine, settings: Settings
) -> None:
    """Ann's need was recorded after her mortgage and wealth opportunities opened. The
    mortgage, open at Applied, resumes in its workflow; the lender approves it (a stage
    change); Dan leaves the bank and his manager Kevin gets it (an owner change)."""
    source = unique("crm")
    body: dict[str, Any] = book(source)
    body["needs"][0]["recorded_at"] = t(3)
    ids = (await post_import(api, body)).json()["ids"]
    dan, kevin = ids["employees"]["E-DAN"], ids["employees"]["E-KEV"]
    mortgage, wealth = ids["opportunities"]["O-MORT"], ids["opportunities"]["O-WLT"]
    late_need = f"Opened on {t(2)[:10]} 09:00 UTC, but its need (buy_home) was only recorded on {t(3)[:10]} 09:00 UTC."

    won_without = f"Won on {t(6)[:10]} 09:00 UTC without any consent of the customer to checking."
    assert sorted(await assert_kept_is_what_judging_now_says(api, db, settings, source, owner_id=dan)) == sorted(
        [
            (mortgage, "need_after_opportunity", dan, late_need),
            (ids["opportunities"]["O-CHK"], "consent_missing", dan, won_without),
            (wealth, "need_after_opportunity", dan, late_need),
        ]
    )

    r = await api.event("mortgage.application_approved", mortgage, {"approval_id": unique("APR")})
    assert r.status_code == 202 and r.json()["opportunity"]["stage"] == "approved", r.text
    assert stale(db, source) == 0

    # Dan leaves: his open mortgage goes to Kevin, and the kept verdict goes with it.
    r = await api.request("PATCH", f"/v1/employees/{dan}", json={"active": False}, headers=api.headers())
    assert r.status_code == 200, r.text

    async def kevins() -> list:
        return await audit(api, owner_id=kevin)

    await until_equal(
        kevins, [(mortgage, "need_after_opportunity", kevin, late_need)], "the mortgage's verdict under Kevin"
    )
    await assert_kept_is_what_judging_now_says(api, db, settings, source, owner_id=kevin)
    assert sorted((o, r) for o, r, _, _ in await audit(api, owner_id=dan)) == sorted(
        [(ids["opportunities"]["O-CHK"], "consent_missing"), (wealth, "need_after_opportunity")]
    )


async def test_the_report_pages_through_in_its_order(api: Api, db: Engine) -> None:
    source = unique("crm")
    body: dict[str, Any] = book(source)
    body["needs"][0]["recorded_at"] = t(3)
    ids = (await post_import(api, body)).json()["ids"]
    dan = ids["employees"]["E-DAN"]
    whole = (await api.get(f"/v1/reports/practice-audit?owner_id={dan}")).json()
    assert whole["next"] is None and len(whole["items"]) == 3
    pages, after = [], None
    while True:
        page = (
            await api.get(f"/v1/reports/practice-audit?owner_id={dan}&limit=2" + (f"&after={after}" if after else ""))
        ).json()
        pages.append(page["items"])
        after = page["next"]
        if after is None:
            break
    assert [len(p) for p in pages] == [2, 1]  # three items, two a page
    assert [i for p in pages for i in p] == whole["items"]
    for query, field in [
        ("after=not-a-cursor", "query.after"),
        ("limit=0", "query.limit"),
        ("limit=5001", "query.limit"),
    ]:
        assert_validation_error(await api.get(f"/v1/reports/practice-audit?{query}", expect=None), field)


async def test_a_stage_change_writes_back_a_verdict_the_kept_findings_lost(
    api: Api, db: Engine, settings: Settings
) -> None:
    """A stage change judges its opportunity again and writes its findings only when they
    differ from those kept (store/audit_findings.py `judge_locked`). Ann's mortgage, open
    at Applied, was opened before her need: its kept finding is lost here by hand and the
    mortgage marked stale (as bulk SQL would leave it); the lender's approval brings the
    finding back and clears the mark."""
    source = unique("crm")
    body: dict[str, Any] = book(source)
    body["needs"][0]["recorded_at"] = t(3)
    ids = (await post_import(api, body)).json()["ids"]
    dan, mortgage = ids["employees"]["E-DAN"], ids["opportunities"]["O-MORT"]
    expected = (mortgage, "need_after_opportunity")

    def kept() -> list[tuple[str, str]]:
        with db.connect() as conn:
            rows = conn.execute(
                select(AuditFinding.opportunity_id, AuditFinding.rule).where(AuditFinding.opportunity_id == mortgage)
            )
            return [tuple(r) for r in rows]

    assert kept() == [expected]
    with db.begin() as conn:
        conn.execute(AuditFinding.__table__.delete().where(AuditFinding.opportunity_id == mortgage))
        conn.execute(update(Opportunity).where(Opportunity.id == mortgage).values(audit_stale=True))
    assert kept() == [] and stale(db, source) == 1

    r = await api.event("mortgage.application_approved", mortgage, {"approval_id": unique("APR")})
    assert r.status_code == 202 and r.json()["opportunity"]["stage"] == "approved", r.text
    assert kept() == [expected] and stale(db, source) == 0
    await assert_kept_is_what_judging_now_says(api, db, settings, source, owner_id=dan)
