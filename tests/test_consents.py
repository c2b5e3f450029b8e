"""Consents given in branch and withdrawn (API.md v1.1, consents): the employee acting is
the witness, recorded with the key it came through; the signed form is the evidence; a
withdrawn consent stays on record with when, why and by whom, and the customer's journey
shows both. Refusals write nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from store.keys import register_api_key
from store.models import Consent, IdempotencyRecord
from tests.helpers import Api, assert_error, assert_validation_error, count, unique

CONSENT_FIELDS = {
    "id",
    "customer_id",
    "opportunity_id",
    "product",
    "channel",
    "evidence",
    "granted_at",
    "actor",
    "via",
    "withdrawn_at",
    "withdrawn_reason",
    "withdrawn_by",
}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def branch_consent(witness: dict, document_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "actor_id": witness["id"],
        "product": "mortgage",
        "channel": "branch",
        "evidence": {"document_id": document_id, "branch": "Midtown"},
        **kw,
    }


async def _journey_consents(api: Api, customer_id: str) -> list[dict]:
    return (await api.get(f"/v1/customers/{customer_id}/journey")).json()["consents"]


async def test_a_branch_consent_is_recorded_with_its_witness_and_withdrawn_once(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Witness")
    customer, _ = await api.customer_with_need(dan["id"], name=unique("Rachel"))
    document = unique("BR-FORM")
    before = datetime.now(UTC)
    r = await api.post(f"/v1/customers/{customer['id']}/consents", branch_consent(dan, document), expect=201)
    consent = r.json()
    assert set(consent) == CONSENT_FIELDS
    assert consent["id"].startswith("con_")
    assert {k: v for k, v in consent.items() if k not in ("id", "granted_at")} == {
        "customer_id": customer["id"],
        "opportunity_id": None,
        "product": "mortgage",
        "channel": "branch",
        "evidence": {"document_id": document, "branch": "Midtown"},
        "actor": dan["id"],
        "via": "test-all",
        "withdrawn_at": None,
        "withdrawn_reason": None,
        "withdrawn_by": None,
    }
    assert before <= _at(consent["granted_at"]) <= datetime.now(UTC)
    assert await _journey_consents(api, customer["id"]) == [consent]

    # Withdrawn by another employee, through a key bound to her: she is recorded.
    kim = await api.employee(role="manager", name="Kim", products=[])
    kims_key = register_api_key(db, unique("kims-tablet"), ["crm:write"], employee_id=kim["id"])
    path = f"/v1/consents/{consent['id']}/withdraw"
    withdrawn = (await api.post(path, {"reason": "changed her mind"}, key=kims_key, expect=200)).json()
    assert {k: v for k, v in withdrawn.items() if k != "withdrawn_at"} == {
        **{k: v for k, v in consent.items() if k != "withdrawn_at"},
        "withdrawn_reason": "changed her mind",
        "withdrawn_by": kim["id"],
    }
    assert _at(consent["granted_at"]) <= _at(withdrawn["withdrawn_at"]) <= datetime.now(UTC)
    assert await _journey_consents(api, customer["id"]) == [withdrawn]

    # Twice is refused, and the first withdrawal stands as it was.
    err = assert_error(
        await api.post(path, {"actor_id": dan["id"], "reason": "again"}, idem=unique("k")), 409, "invalid_transition"
    )
    assert set(err["details"]) == {"withdrawn_at"}
    assert _at(err["details"]["withdrawn_at"]) == _at(withdrawn["withdrawn_at"])
    assert await _journey_consents(api, customer["id"]) == [withdrawn]

    unknown = await api.post("/v1/consents/con_nope/withdraw", {"actor_id": dan["id"], "reason": "x"})
    assert assert_error(unknown, 404, "not_found")["details"] == {"id": "con_nope"}
    assert_validation_error(await api.post(path, {"actor_id": dan["id"], "reason": "  "}), "reason")


async def test_a_consent_for_an_opportunity_must_be_for_this_customers_opportunity_and_product(
    api: Api, db: Engine
) -> None:
    dan = await api.employee(name="Dan Branch")
    opp = await api.opportunity(owner=dan)
    other = await api.opportunity(owner=dan)
    path = f"/v1/customers/{opp['customer_id']}/consents"

    tied = (await api.post(path, branch_consent(dan, "BR-1", opportunity_id=opp["id"]), expect=201)).json()
    assert (tied["opportunity_id"], tied["product"]) == (opp["id"], "mortgage")

    assert_validation_error(
        await api.post(path, branch_consent(dan, "BR-2", opportunity_id=other["id"])), "opportunity_id"
    )
    assert_validation_error(
        await api.post(path, branch_consent(dan, "BR-3", opportunity_id="opp_nope")), "opportunity_id"
    )
    wrong_product = branch_consent(dan, "BR-4", opportunity_id=opp["id"], product="checking")
    assert_validation_error(await api.post(path, wrong_product), "product")
    assert [c["id"] for c in await _journey_consents(api, opp["customer_id"])] == [tied["id"]]


async def test_malformed_branch_consents_are_refused_and_write_nothing(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Careful")
    customer, _ = await api.customer_with_need(dan["id"], name=unique("Rita"))
    path = f"/v1/customers/{customer['id']}/consents"
    good = branch_consent(dan, "BR-OK")
    for body, field in [
        ({**good, "channel": "sms"}, "channel"),  # SMS consents arrive as events
        ({**good, "channel": "esignature"}, "channel"),
        ({**good, "evidence": {"branch": "Midtown"}}, "evidence"),  # no signed form
        ({**good, "evidence": {"document_id": "   "}}, "evidence"),
        ({**good, "evidence": {"document_id": "D", "note": "x" * 2001}}, "evidence"),
        ({**good, "evidence": {"document_id": "D", **{f"k{i}": "v" for i in range(20)}}}, "evidence"),
        ({**good, "evidence": {"document_id": "D", "bad key!": "v"}}, "evidence"),
        ({**good, "product": "boats"}, "product"),
        ({**good, "actor_id": "emp_nobody"}, "actor_id"),
        ({k: v for k, v in good.items() if k != "evidence"}, "evidence"),
        ({**good, "granted_at": "2020-01-01T00:00:00Z"}, "granted_at"),  # the time is the server's
    ]:
        key = unique("idem")
        assert_validation_error(await api.post(path, body, idem=key), field)
    missing = assert_error(await api.post("/v1/customers/cus_nope/consents", good), 404, "not_found")
    assert missing["details"] == {"id": "cus_nope"}
    assert count(db, Consent, Consent.customer_id == customer["id"]) == 0
    assert await _journey_consents(api, customer["id"]) == []


async def test_the_same_idempotency_key_records_one_consent(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Twice")
    customer, _ = await api.customer_with_need(dan["id"], name=unique("Ida"))
    path = f"/v1/customers/{customer['id']}/consents"
    key = unique("idem-consent")
    first = await api.post(path, branch_consent(dan, "BR-ONCE"), idem=key, expect=201)
    again = await api.post(path, branch_consent(dan, "BR-ONCE"), idem=key, expect=201)
    assert (again.json(), again.headers.get("idempotent-replayed")) == (first.json(), "true")
    assert count(db, Consent, Consent.customer_id == customer["id"]) == 1
    conflict = await api.post(path, branch_consent(dan, "BR-OTHER"), idem=key)
    assert assert_error(conflict, 409, "conflict")["details"] == {"idempotency_key": key}
    assert count(db, Consent, Consent.customer_id == customer["id"]) == 1
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == key) == 1
