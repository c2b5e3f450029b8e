"""Every command the process forbids answers 409 `invalid_transition` and changes nothing:
not the stage, not the checkpoints, not even the workflow's history."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.client import Client

from tests.helpers import Api, assert_error, history_length

MORTGAGE_STAGES = ["interested", "searching", "applied", "approved", "closed_won"]


async def _assert_refused(
    api: Api, client: Client, opp: dict, method: str, path: str, body: dict, message: str, details: dict
) -> None:
    """The command is refused with exactly this message and these details, and nothing changes."""
    before = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    events_before = await history_length(client, opp["workflow_id"])
    if method == "event":
        r = await api.event(path, opp["id"], body, expect=None)
    else:
        r = await api.post(f"/v1/opportunities/{opp['id']}/{path}", body)
    error = assert_error(r, 409, "invalid_transition")
    assert (error["message"], error["details"]) == (message, details)
    after = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert after == before
    assert await history_length(client, opp["workflow_id"]) == events_before


async def test_refused_moves_change_nothing(api: Api, client: Client) -> None:
    dan = await api.employee(name="Dan")
    opp = await api.opportunity(owner=dan)
    advance = lambda stage, **ev: {"actor_id": dan["id"], "to_stage": stage, "evidence": ev}  # noqa: E731

    # Skipping a stage.
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "advance",
        advance("applied"),
        "'applied' is not the next stage after 'interested'",
        {"current_stage": "interested", "next_stage": "searching"},
    )
    # A stage the process does not have.
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "advance",
        advance("funded"),
        "mortgage has no stage 'funded'",
        {"stages": MORTGAGE_STAGES},
    )
    # Missing evidence, and blank evidence (which is no evidence).
    for evidence in ({}, {"realtor": "   "}):
        await _assert_refused(
            api,
            client,
            opp,
            "post",
            "advance",
            advance("searching", **evidence),
            "entering 'searching' needs evidence: realtor",
            {"missing_evidence": ["realtor"]},
        )
    # An event out of order, and an event of another product's process.
    await _assert_refused(
        api,
        client,
        opp,
        "event",
        "mortgage.application_approved",
        {"approval_id": "A"},
        "'mortgage.application_approved' enters 'approved', which is not the next stage after 'interested'",
        {"current_stage": "interested"},
    )
    await _assert_refused(
        api,
        client,
        opp,
        "event",
        "account.opened",
        {"account_number": "1"},
        "'account.opened' does not apply to a mortgage opportunity",
        {},
    )
    await _assert_refused(
        api,
        client,
        opp,
        "event",
        "mortgage.application_declined",
        {"reason": "x"},
        "'mortgage.application_declined' applies only in stage applied",
        {"current_stage": "interested"},
    )
    # Nothing to resend yet.
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "resend-signature",
        {"actor_id": dan["id"]},
        "a signature request can be resent only after it was declined, voided, expired or undeliverable",
        {"signature_status": None},
    )

    await api.post(f"/v1/opportunities/{opp['id']}/advance", advance("searching", realtor="Jane Realty"), expect=200)
    # A manual move into a stage only an event may enter.
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "advance",
        advance("applied", application_id="APP-1"),
        "'applied' is entered only by the event 'mortgage.application_submitted'",
        {"entered_by": "event"},
    )


async def test_only_owner_or_manager_may_act(api: Api, client: Client) -> None:
    dan = await api.employee(name="Dan")
    bob = await api.employee(name="Bob", email="bob@bank.example")
    kevin = await api.employee(role="manager", name="Kevin", email="kevin@bank.example")
    opp = await api.opportunity(owner=dan)
    body = {"actor_id": bob["id"], "to_stage": "searching", "evidence": {"realtor": "R"}}
    only_the_owner = f"only the owner ({dan['id']}) or a manager may act on this opportunity"
    await _assert_refused(api, client, opp, "post", "advance", body, only_the_owner, {"actor_id": bob["id"]})
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "close-lost",
        {"actor_id": bob["id"], "reason": "x"},
        only_the_owner,
        {"actor_id": bob["id"]},
    )
    # A manager may.
    r = await api.post(f"/v1/opportunities/{opp['id']}/advance", {**body, "actor_id": kevin["id"]}, expect=200)
    assert r.json()["checkpoints"][-1]["actor"] == kevin["id"]


async def test_closed_won_only_through_signature(api: Api, client: Client) -> None:
    dan = await api.employee(name="Dan")
    opp = await api.opportunity(owner=dan)
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-1"})
    await api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-1"})
    await _assert_refused(
        api,
        client,
        opp,
        "post",
        "advance",
        {"actor_id": dan["id"], "to_stage": "closed_won", "evidence": {}},
        "'closed_won' is entered only by the customer's completed e-signature",
        {"entered_by": "signature"},
    )


async def test_close_lost_from_any_open_stage_then_nothing_more(api: Api, client: Client) -> None:
    dan = await api.employee(name="Dan")
    opp = await api.opportunity(owner=dan)
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    before = datetime.now(UTC)
    r = await api.post(
        f"/v1/opportunities/{opp['id']}/close-lost", {"actor_id": dan["id"], "reason": "customer withdrew"}, expect=200
    )
    after = datetime.now(UTC)
    lost = r.json()
    assert (lost["status"], lost["stage"], lost["probability"], lost["lost_reason"]) == (
        "lost",
        "closed_lost",
        0,
        "customer withdrew",
    )
    assert [c["stage"] for c in lost["checkpoints"]] == ["interested", "searching", "closed_lost"]
    assert lost["checkpoints"][-1]["evidence"] == {"reason": "customer withdrew"}
    assert before <= datetime.fromisoformat(lost["closed_at"]) <= after
    assert lost["closed_at"] == lost["checkpoints"][-1]["entered_at"]

    # The workflow has finished; every further command is refused and nothing changes.
    for path, body in [
        ("advance", {"actor_id": dan["id"], "to_stage": "applied", "evidence": {}}),
        ("close-lost", {"actor_id": dan["id"], "reason": "again"}),
    ]:
        assert_error(await api.post(f"/v1/opportunities/{opp['id']}/{path}", body), 409, "invalid_transition")
    r = await api.event("mortgage.application_submitted", opp["id"], {"application_id": "A"}, expect=None)
    assert_error(r, 409, "invalid_transition")
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json() == lost


async def test_declined_by_underwriting_closes_lost(api: Api) -> None:
    opp = await api.opportunity()
    owner = opp["owner_id"]
    await api.post(
        f"/v1/opportunities/{opp['id']}/advance",
        {"actor_id": owner, "to_stage": "searching", "evidence": {"realtor": "R"}},
        expect=200,
    )
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-2"})
    r = await api.event("mortgage.application_declined", opp["id"], {"reason": "declined by underwriting"})
    opp = r.json()["opportunity"]
    assert (opp["status"], opp["stage"], opp["probability"], opp["lost_reason"]) == (
        "lost",
        "closed_lost",
        0,
        "declined by underwriting",
    )
    assert [(c["stage"], c["trigger"]) for c in opp["checkpoints"]] == [
        ("interested", "manual"),
        ("searching", "manual"),
        ("applied", "event"),
        ("closed_lost", "event"),
    ]
