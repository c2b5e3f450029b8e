"""Import of a book of business (spec/API.md; api/routers/imports.py, domain/imports.py,
store/imports.py): exact counts and ids, every problem of a bad book listed with nothing
written, the same book again all `unchanged`, records keeping their own times and source,
an open mortgage resuming in its workflow at its last stage, the practice audit judging
the imported book, and `starter.py import FILE`.

The session database is shared, so each test imports under a source of its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, delete, select
from temporalio.client import Client

from cli.imports import import_book
from cli.main import build_parser
from domain.ids import imported_id, opportunity_workflow_id
from domain.imports import MAX_CHECKPOINTS
from domain.opportunity import OpportunityState
from store.models import Checkpoint, Consent, Customer, Employee, Household, Need, Opportunity, SignatureRequest
from tests.helpers import Api, assert_validation_error, count, unique, until_equal, within, workflow_ids
from workflows.opportunity import OpportunityWorkflow

KINDS = ["households", "employees", "customers", "needs", "opportunities", "checkpoints", "consents"]


def t(day: int, hour: int = 9) -> str:
    return datetime(2025, 3, day, hour, tzinfo=UTC).isoformat()


def cp(stage: str, day: int, actor: str = "E-DAN", trigger: str = "manual", **evidence: Any) -> dict:
    return {"stage": stage, "entered_at": t(day), "trigger": trigger, "actor": actor, "evidence": evidence}


def book(source: str) -> dict[str, Any]:
    """A small book: Kevin manages Dan; Ann and Bo share a household, Cy has none; an open
    mortgage at Applied, a clean won insurance (consent before the win), a checking account
    won without any consent (planted), a wealth opportunity lost."""
    return {
        "source": source,
        "employees": [
            {
                "external_id": "E-DAN",
                "name": "Dan Old",
                "email": "dan.old@bank.example",
                "role": "mortgage_broker",
                "line_of_business": "mortgage",
                "products": ["mortgage", "insurance"],
                "cities": ["Boston"],
                "states": ["MA"],
                "capacity": 10,
                "manager": "E-KEV",
            },
            {
                "external_id": "E-KEV",
                "name": "Kevin Old",
                "email": "kevin.old@bank.example",
                "role": "manager",
                "line_of_business": "mortgage",
                "products": [],
                "cities": [],
                "states": ["MA"],
                "capacity": 0,
            },
        ],
        "customers": [
            {"external_id": "C-ANN", "name": "Ann Old", "email": "ann@example.com", "household": "H-1"},
            {"external_id": "C-BO", "name": "Bo Old", "household": "H-1", "city": "Boston", "state": "MA"},
            {"external_id": "C-CY", "name": "Cy Old", "phone": "+16175550100"},
        ],
        "needs": [
            {
                "external_id": "N-ANN",
                "customer": "C-ANN",
                "kind": "buy_home",
                "description": "A first home",
                "recorded_by": "E-DAN",
                "recorded_at": t(1),
            },
            {
                "external_id": "N-BO",
                "customer": "C-BO",
                "kind": "protect_family",
                "description": "Life cover",
                "recorded_by": "E-DAN",
                "recorded_at": t(1),
            },
            {
                "external_id": "N-CY",
                "customer": "C-CY",
                "kind": "daily_banking",
                "description": "A current account",
                "recorded_by": "E-DAN",
                "recorded_at": t(1),
            },
        ],
        "opportunities": [
            {
                "external_id": "O-MORT",
                "customer": "C-ANN",
                "product": "mortgage",
                "owner": "E-DAN",
                "need": "N-ANN",
                "amount": "450000.00",
                "opened_at": t(2),
                "status": "open",
                "checkpoints": [
                    cp("interested", 2),
                    cp("searching", 3, realtor="Old Realty"),
                    cp("applied", 4, trigger="event", actor="mortgage-system", application_id="APP-OLD-1"),
                ],
            },
            {
                "external_id": "O-INS",
                "customer": "C-BO",
                "product": "insurance",
                "owner": "E-DAN",
                "need": "N-BO",
                "opened_at": t(2),
                "status": "won",
                "checkpoints": [
                    cp("interested", 2),
                    cp("proposal", 3, proposal_id="P-OLD-1"),
                    cp("closed_won", 5, trigger="event", envelope_id="ENV-OLD-1", document_sha256="ab" * 32),
                ],
            },
            {
                "external_id": "O-CHK",
                "customer": "C-CY",
                "product": "checking",
                "owner": "E-DAN",
                "need": "N-CY",
                "opened_at": t(2),
                "status": "won",
                "checkpoints": [
                    cp("interested", 2),
                    cp("authorised", 3, trigger="event", phone="+16175550100", message_id="SM-OLD", text="YES"),
                    cp("opened", 6, trigger="event", account_number="000123"),
                ],
            },
            {
                "external_id": "O-WLT",
                "customer": "C-ANN",
                "product": "wealth",
                "owner": "E-DAN",
                "need": "N-ANN",
                "opened_at": t(2),
                "status": "lost",
                "lost_reason": "went elsewhere",
                "checkpoints": [cp("interested", 2), cp("closed_lost", 7, reason="went elsewhere")],
            },
        ],
        "consents": [
            {
                "external_id": "K-INS",
                "customer": "C-BO",
                "product": "insurance",
                "opportunity": "O-INS",
                "channel": "esignature",
                "evidence": {"envelope_id": "ENV-OLD-1"},
                "granted_at": t(4),
            }
        ],
    }


CREATED = {
    "households": 2,
    "employees": 2,
    "customers": 3,
    "needs": 3,
    "opportunities": 4,
    "checkpoints": 11,
    "consents": 1,
}


def idof(source: str, kind: str, external_id: str) -> str:
    prefix = {
        "households": "hh",
        "employees": "emp",
        "customers": "cus",
        "needs": "need",
        "opportunities": "opp",
        "consents": "con",
    }[kind]
    return imported_id(prefix, source, kind, external_id)


async def post_import(api: Api, body: dict, expect: int | None = 200) -> httpx.Response:
    r = await api.request("POST", "/v1/imports", json=body, headers=api.headers())
    if expect is not None:
        assert r.status_code == expect, r.text
    return r


async def test_a_small_book_imports_with_exact_counts_and_ids_and_again_is_all_unchanged(api: Api, db: Engine) -> None:
    source = unique("crm")
    first = (await post_import(api, book(source))).json()
    assert first["created"] == CREATED
    assert first["unchanged"] == dict.fromkeys(KINDS, 0)
    assert first["ids"]["employees"] == {e: idof(source, "employees", e) for e in ("E-DAN", "E-KEV")}
    assert first["ids"]["customers"] == {c: idof(source, "customers", c) for c in ("C-ANN", "C-BO", "C-CY")}
    assert first["ids"]["households"] == {h: idof(source, "households", h) for h in ("H-1", "customer/C-CY")}
    assert first["ids"]["needs"] == {n: idof(source, "needs", n) for n in ("N-ANN", "N-BO", "N-CY")}
    assert first["ids"]["opportunities"] == {
        o: idof(source, "opportunities", o) for o in ("O-MORT", "O-INS", "O-CHK", "O-WLT")
    }
    assert first["ids"]["consents"] == {"K-INS": idof(source, "consents", "K-INS")}
    ids = first["ids"]
    with db.connect() as conn:
        ann = conn.execute(select(Customer).where(Customer.id == ids["customers"]["C-ANN"])).one()
        bo = conn.execute(select(Customer).where(Customer.id == ids["customers"]["C-BO"])).one()
        dan = conn.execute(select(Employee).where(Employee.id == ids["employees"]["E-DAN"])).one()
    assert ann.household_id == bo.household_id == ids["households"]["H-1"]
    assert dan.manager_id == ids["employees"]["E-KEV"]

    again = (await post_import(api, book(source))).json()
    assert again["created"] == dict.fromkeys(KINDS, 0)
    assert again["unchanged"] == CREATED
    assert again["ids"] == first["ids"]
    assert count(db, Opportunity, Opportunity.source == source) == 4
    assert count(db, Checkpoint, Checkpoint.opportunity_id.in_(ids["opportunities"].values())) == 11
    assert count(db, Household, Household.source == source) == 2


async def test_imported_records_keep_their_own_times_and_source(api: Api, db: Engine) -> None:
    source = unique("crm")
    ids = (await post_import(api, book(source))).json()["ids"]
    with db.connect() as conn:
        ins = conn.execute(select(Opportunity).where(Opportunity.id == ids["opportunities"]["O-INS"])).one()
        need = conn.execute(select(Need).where(Need.id == ids["needs"]["N-BO"])).one()
        consent = conn.execute(select(Consent).where(Consent.id == ids["consents"]["K-INS"])).one()
        cps = conn.execute(select(Checkpoint).where(Checkpoint.opportunity_id == ins.id).order_by(Checkpoint.seq)).all()
        lost = conn.execute(select(Opportunity).where(Opportunity.id == ids["opportunities"]["O-WLT"])).one()
    assert (ins.source, ins.external_id, ins.status, ins.stage) == (source, "O-INS", "won", "closed_won")
    assert ins.opened_at == datetime(2025, 3, 2, 9, tzinfo=UTC)
    assert ins.closed_at == datetime(2025, 3, 5, 9, tzinfo=UTC)  # its last checkpoint's time
    assert ins.need_id == ids["needs"]["N-BO"] and ins.owner_id == ids["employees"]["E-DAN"]
    assert [(c.seq, c.stage, c.entered_at.day, c.actor) for c in cps] == [
        (1, "interested", 2, ids["employees"]["E-DAN"]),
        (2, "proposal", 3, ids["employees"]["E-DAN"]),
        (3, "closed_won", 5, ids["employees"]["E-DAN"]),
    ]
    assert cps[1].evidence == {"proposal_id": "P-OLD-1"}
    assert (need.source, need.external_id, need.recorded_at) == (source, "N-BO", datetime(2025, 3, 1, 9, tzinfo=UTC))
    assert (consent.source, consent.granted_at, consent.opportunity_id) == (
        source,
        datetime(2025, 3, 4, 9, tzinfo=UTC),
        ins.id,
    )
    assert (lost.status, lost.stage, lost.lost_reason, lost.probability) == ("lost", "closed_lost", "went elsewhere", 0)
    assert lost.closed_at == datetime(2025, 3, 7, 9, tzinfo=UTC)


async def test_a_bad_book_is_422_with_every_problem_and_writes_nothing(api: Api, db: Engine) -> None:
    source = unique("crm")
    bad = book(source)
    bad["employees"][1]["role"] = "wizard"  # role
    bad["needs"][0]["customer"] = "C-NOBODY"  # unknown customer
    bad["opportunities"][0]["owner"] = "E-NOBODY"  # unknown owner
    bad["opportunities"][0]["need"] = "N-NOBODY"  # unknown need
    bad["opportunities"][0]["checkpoints"][1]["stage"] = "dreaming"  # stage
    bad["opportunities"][1]["product"] = "yacht"  # product
    bad["consents"][0]["channel"] = "pigeon"  # channel
    bad["customers"].append({"external_id": "C-ANN", "name": "Ann Twice"})  # duplicate external id
    bad["needs"][1]["recorded_at"] = "yesterday"  # not a time
    before = {m: count(db, m) for m in (Household, Customer, Employee, Need, Opportunity, Checkpoint, Consent)}
    r = await post_import(api, bad, expect=None)
    err = assert_validation_error(r)
    paths = [e["path"] for e in err["details"]["errors"]]
    assert all(e["message"] for e in err["details"]["errors"])
    assert sorted(paths) == sorted(
        [
            "employees[1].role",
            "customers[3].external_id",
            "needs[0].customer",
            "needs[1].recorded_at",
            "opportunities[0].owner",
            "opportunities[0].need",
            "opportunities[0].checkpoints[1].stage",
            "opportunities[1].product",
            "consents[0].channel",
        ]
    ), err
    assert {m: count(db, m) for m in before} == before
    assert count(db, Opportunity, Opportunity.source == source) == 0
    assert count(db, Customer, Customer.source == source) == 0


async def test_an_open_imported_mortgage_resumes_at_applied_and_moves_on(api: Api, db: Engine, client: Client) -> None:
    source = unique("crm")
    ids = (await post_import(api, book(source))).json()["ids"]
    opp_id = ids["opportunities"]["O-MORT"]
    handle = client.get_workflow_handle(opportunity_workflow_id(opp_id))
    state = await within(handle.query(OpportunityWorkflow.current_state, result_type=OpportunityState), "query")
    assert (state.stage, state.status.value, len(state.checkpoints)) == ("applied", "open", 3)
    await until_equal(
        lambda: workflow_ids(client, f'WorkflowId = "{handle.id}" AND Stage = "applied"'),
        [handle.id],
        "the imported mortgage's Stage search attribute",
    )
    # Won, lost: no workflow.
    for closed in ("O-INS", "O-CHK", "O-WLT"):
        assert (
            await workflow_ids(client, f'WorkflowId = "{opportunity_workflow_id(ids["opportunities"][closed])}"') == []
        )

    r = await api.event("mortgage.application_approved", opp_id, {"approval_id": "APR-NEW-1"})
    assert r.json()["opportunity"]["stage"] == "approved"
    with db.connect() as conn:
        rows = conn.execute(
            select(Checkpoint).where(Checkpoint.opportunity_id == opp_id).order_by(Checkpoint.seq)
        ).all()
        opp = conn.execute(select(Opportunity).where(Opportunity.id == opp_id)).one()
    assert [(c.seq, c.stage) for c in rows] == [(1, "interested"), (2, "searching"), (3, "applied"), (4, "approved")]
    assert rows[2].entered_at == datetime(2025, 3, 4, 9, tzinfo=UTC)  # the imported ones untouched
    assert (opp.stage, opp.last_seq, opp.source, opp.opened_at) == (
        "approved",
        4,
        source,
        datetime(2025, 3, 2, 9, tzinfo=UTC),
    )
    # Importing the book again leaves the moved-on opportunity where it is.
    again = (await post_import(api, book(source))).json()
    assert again["unchanged"]["opportunities"] == 4
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp_id) == 4


async def test_the_practice_audit_judges_the_imported_book(api: Api) -> None:
    source = unique("crm")
    ids = (await post_import(api, book(source))).json()["ids"]
    owner = ids["employees"]["E-DAN"]
    items = (await api.get(f"/v1/reports/practice-audit?owner_id={owner}")).json()["items"]
    assert [(i["opportunity_id"], i["rule"]) for i in items] == [(ids["opportunities"]["O-CHK"], "consent_missing")], (
        items
    )


async def test_references_name_existing_needflow_ids_too(api: Api, db: Engine) -> None:
    owner = await api.employee(name="Nia Live", email="nia.live@bank.example")
    customer, need = await api.customer_with_need(owner["id"], name=unique("Lee Live"))
    source = unique("crm")
    body = {
        "source": source,
        "opportunities": [
            {
                "external_id": "O-1",
                "customer": customer["id"],
                "product": "insurance",
                "owner": owner["id"],
                "need": need["id"],
                "opened_at": t(2),
                "status": "lost",
                "checkpoints": [cp("interested", 2, actor=owner["id"]), cp("closed_lost", 3, actor=owner["id"])],
            }
        ],
    }
    answer = (await post_import(api, body)).json()
    assert answer["created"]["opportunities"] == 1 and answer["created"]["customers"] == 0
    with db.connect() as conn:
        opp = conn.execute(select(Opportunity).where(Opportunity.id == answer["ids"]["opportunities"]["O-1"])).one()
    assert (opp.customer_id, opp.need_id, opp.owner_id) == (customer["id"], need["id"], owner["id"])


# ---------------------------------------------------------------- starter.py import FILE


def test_starter_import_parses_its_file_argument() -> None:
    args = build_parser().parse_args(["import", "book.json", "--api", "http://x"])
    assert (args.command, args.file, args.api) == ("import", "book.json", "http://x")


def test_starter_import_posts_the_file_and_prints_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(json.dumps(book("crm-file")))
    seen: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/imports")
        seen.append(json.loads(request.content))
        return httpx.Response(
            200, json={"created": CREATED, "unchanged": dict.fromkeys(KINDS, 0), "ids": {k: {} for k in KINDS}}
        )

    lines: list[str] = []
    with httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer)) as http:
        import_book(http, lines.append, str(path))
    assert seen == [book("crm-file")]
    assert lines[0] == "imported 'crm-file':"
    assert "opportunities" in lines[6] and lines[6].split()[1:] == ["4", "0"]


def test_starter_import_prints_every_problem_of_a_refused_book(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(json.dumps({"source": "x"}))
    problems = [{"path": "opportunities[0].owner", "message": "no employee 'E-1'"}]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422, json={"error": {"code": "validation_error", "message": "nothing", "details": {"errors": problems}}}
        )

    lines: list[str] = []
    with httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer)) as http:
        try:
            import_book(http, lines.append, str(path))
        except Exception as exc:  # noqa: BLE001 (the CLI's ApiFailure)
            assert "422" in str(exc)
        else:
            raise AssertionError("a refused import must fail")
    assert lines == ["  opportunities[0].owner: no employee 'E-1'"]


async def test_an_open_mortgage_imported_at_approved_sends_the_documents_for_signature(api: Api, db: Engine) -> None:
    """Approved asks for the customer's signature: the resumed workflow sends ours (the old
    system's request did not come with the book), so the mortgage can still be won."""
    source = unique("crm")
    body = book(source)
    mortgage = body["opportunities"][0]
    mortgage["checkpoints"].append(cp("approved", 5, trigger="event", actor="mortgage-system", approval_id="APR-O"))
    ids = (await post_import(api, body)).json()["ids"]
    opp_id = ids["opportunities"]["O-MORT"]

    async def requested() -> int:
        return count(db, SignatureRequest, SignatureRequest.opportunity_id == opp_id)

    await until_equal(requested, 1, "the imported mortgage's signature request")
    opp = (await api.get(f"/v1/opportunities/{opp_id}")).json()
    assert (opp["stage"], opp["signature"]["status"]) == ("approved", "sent"), opp
    link = await api.signing_link(opp)
    assert (await api.sign(link, full_name="Ann Old")).status_code == 200

    async def status() -> str:
        return (await api.get(f"/v1/opportunities/{opp_id}")).json()["status"]

    await until_equal(status, "won", "the imported mortgage won by signature")


async def test_an_opportunity_imported_without_a_need_reads_back_and_the_audit_says_so(api: Api) -> None:
    source = unique("crm")
    body = book(source)
    del body["opportunities"][3]["need"]  # the lost wealth opportunity: no need recorded
    ids = (await post_import(api, body)).json()["ids"]
    wealth = ids["opportunities"]["O-WLT"]
    opp = (await api.get(f"/v1/opportunities/{wealth}")).json()
    assert (opp["need_id"], opp["status"], opp["stage"]) == (None, "lost", "closed_lost")
    items = (await api.get(f"/v1/reports/practice-audit?owner_id={ids['employees']['E-DAN']}")).json()["items"]
    assert sorted((i["opportunity_id"], i["rule"]) for i in items) == sorted(
        [(ids["opportunities"]["O-CHK"], "consent_missing"), (wealth, "need_after_opportunity")]
    ), items


async def test_a_reimport_after_a_failure_half_way_writes_what_is_missing(api: Api, db: Engine) -> None:
    """Chunks are committed one by one: if the import stopped after an opportunity's chunk
    but before its checkpoints', sending it again writes just the missing rows."""
    source = unique("crm")
    ids = (await post_import(api, book(source))).json()["ids"]
    ins = ids["opportunities"]["O-INS"]
    with db.begin() as conn:  # as if the checkpoints' chunk never committed
        conn.execute(delete(Checkpoint).where(Checkpoint.opportunity_id == ins))
    again = (await post_import(api, book(source))).json()
    assert again["created"] == {**dict.fromkeys(KINDS, 0), "checkpoints": 3}
    assert again["unchanged"] == {**CREATED, "checkpoints": 8}
    assert count(db, Checkpoint, Checkpoint.opportunity_id == ins) == 3


async def test_oversized_evidence_is_refused_with_its_path_and_writes_nothing(api: Api, db: Engine) -> None:
    """An open opportunity's checkpoints travel in its workflow's input: evidence is capped."""
    source = unique("crm")
    bad = book(source)
    bad["opportunities"][0]["checkpoints"][0]["evidence"] = {"note": "x" * 3_000_000}
    bad["consents"][0]["evidence"] = {f"k{i}": "v" for i in range(21)}
    err = assert_validation_error(await post_import(api, bad, expect=None))
    # The value is refused as each type a value may be (text too long, not a number, ...).
    where = {e["path"].split(".note")[0] for e in err["details"]["errors"]}
    assert where == {"consents[0].evidence", "opportunities[0].checkpoints[0].evidence"}, err
    assert count(db, Opportunity, Opportunity.source == source) == 0


async def test_an_opportunity_with_more_checkpoints_than_a_workflow_input_holds_is_refused(
    api: Api, db: Engine
) -> None:
    """An open one's checkpoints travel in its workflow's input (Temporal refuses a payload
    over 2 MiB): more than MAX_CHECKPOINTS is a 422 naming them, and nothing is written."""
    source = unique("crm")
    body = book(source)
    body["opportunities"][0]["checkpoints"] = [cp("interested", 2)] * (MAX_CHECKPOINTS + 1)
    r = await post_import(api, body, expect=422)
    fields = [e["field"] for e in r.json()["error"]["details"]["errors"]]
    assert any(f.startswith("opportunities[0].checkpoints") for f in fields), fields
    assert count(db, Opportunity, Opportunity.source == source) == 0
