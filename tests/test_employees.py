"""Employees after they are created (API.md v1.1, identity): `PATCH /v1/employees/{id}`
changes capacity, products, territory, manager or `active`, and routing follows at once;
`active: false` deactivates: the keys answer 401, the open referrals are re-routed (never
back), the open opportunities go to the manager (recorded, and searchable by OwnerId),
the manager is told once, and the same PATCH again changes nothing more. The release
and transfer rules themselves are pinned here too, without a server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, text
from temporalio.client import Client
from temporalio.worker import Replayer

from api import deactivation
from domain.opportunity import OpportunityState, TransferOwnerCommand, TransitionRefused, check_transfer
from domain.referral import ReferralState, ReleaseCommand, check_release
from domain.types import OpportunityStatus, Product
from store.keys import register_api_key
from store.models import Employee, Notification, OwnerChange, ReferralHistory
from tests.helpers import (
    Api,
    Inbox,
    assert_error,
    assert_validation_error,
    count,
    statuses,
    territory,
    unique,
    until_equal,
    within,
)
from worker import WORKFLOWS
from workflows import SA_OWNER_ID
from workflows.client import DATA_CONVERTER

ADMIN_KEY_NAME = "test-all"  # the name of the key `api` uses: the actor of what an admin does


async def patch(api: Api, employee_id: str, body: Any, *, key: str | None = None) -> httpx.Response:
    return await api.request("PATCH", f"/v1/employees/{employee_id}", json=body, headers=api.headers(key))


def row(db: Engine, employee_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        e = conn.execute(select(Employee).where(Employee.id == employee_id)).one()
    return {k: getattr(e, k) for k in ("capacity", "products", "cities", "states", "manager_id", "active")}


def owner_changes(db: Engine, opportunity_id: str) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    OwnerChange.seq,
                    OwnerChange.from_owner_id,
                    OwnerChange.to_owner_id,
                    OwnerChange.actor,
                    OwnerChange.via,
                    OwnerChange.reason,
                )
                .where(OwnerChange.opportunity_id == opportunity_id)
                .order_by(OwnerChange.seq)
            )
        ]


# ---------------------------------------------------------------- the rules, without a server

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _referral(status: str, assignee: str | None = "emp_bob") -> ReferralState:
    return ReferralState(referral_id="ref_1", status=status, assignee_id=assignee)  # type: ignore[arg-type]


def _refusal(check: Callable[..., object], *args: Any) -> tuple[str, dict]:
    with pytest.raises(TransitionRefused) as info:
        check(*args)
    return info.value.message, info.value.details


def test_a_referral_is_released_only_from_whoever_holds_it_open() -> None:
    release = ReleaseCommand(employee_id="emp_bob", actor="ops", via="ops", reason="assignee deactivated")
    assert check_release(_referral("assigned"), release) is None
    assert check_release(_referral("accepted"), release) is None
    assert _refusal(check_release, _referral("assigned", "emp_ann"), release) == (
        "the referral is not with emp_bob; it is assigned with emp_ann",
        {"status": "assigned", "assignee_id": "emp_ann"},
    )
    assert _refusal(check_release, _referral("unassigned", None), release) == (
        "the referral is not with emp_bob; it is unassigned",
        {"status": "unassigned", "assignee_id": None},
    )
    assert _refusal(check_release, _referral("routing"), release) == (
        "the referral is routing right now; try again in a moment",
        {"status": "routing"},
    )
    assert _refusal(check_release, _referral("converted"), release) == (
        "the referral is converted; nothing more can happen to it",
        {"status": "converted"},
    )
    blank = release.model_copy(update={"reason": "  "})
    assert _refusal(check_release, _referral("assigned"), blank) == ("releasing a referral needs a reason", {})


def test_an_open_opportunity_changes_hands_to_someone_else_for_a_reason() -> None:
    state = OpportunityState(
        opportunity_id="opp_1",
        customer_id="cus_1",
        product=Product.mortgage,
        process_version=1,
        owner_id="emp_bob",
        stage="searching",
        probability=20,
    )
    to_kevin = TransferOwnerCommand(to_owner_id="emp_kevin", actor="ops", via="ops", reason="owner deactivated")
    assert check_transfer(state, to_kevin) is None
    to_bob = to_kevin.model_copy(update={"to_owner_id": "emp_bob"})
    assert _refusal(check_transfer, state, to_bob) == (
        "the opportunity is already owned by emp_bob",
        {"owner_id": "emp_bob"},
    )
    assert _refusal(check_transfer, state, to_kevin.model_copy(update={"reason": ""})) == (
        "changing the owner needs a reason",
        {},
    )
    for closed in (OpportunityStatus.won, OpportunityStatus.lost):
        assert _refusal(check_transfer, state.model_copy(update={"status": closed}), to_kevin) == (
            f"opportunity is {closed.value}; nothing more can happen to it",
            {"status": closed.value},
        )


# ---------------------------------------------------------------- PATCH: fields and validation


async def test_patch_changes_only_what_is_sent_and_answers_the_employee(api: Api, db: Engine) -> None:
    kim = await api.employee(role="manager", name="Kim", products=[])
    dan = await api.employee(name="Dan Patched", email="dan.patched@bank.example")
    assert dan["active"] is True and dan["manager_id"] is None

    body = {
        "capacity": 3,
        "products": ["mortgage", "wealth"],
        "cities": ["Buffalo"],
        "states": ["NY"],
        "manager_id": kim["id"],
    }
    changed = (await patch(api, dan["id"], body)).json()
    assert changed == {**dan, **body, "deactivation": None}
    assert row(db, dan["id"]) == {**body, "active": True}

    # Only what is sent: the rest stays; `manager_id: null` removes the manager.
    again = (await patch(api, dan["id"], {"capacity": 0, "manager_id": None})).json()
    assert (again["capacity"], again["manager_id"], again["products"], again["states"]) == (
        0,
        None,
        ["mortgage", "wealth"],
        ["NY"],
    )
    assert row(db, dan["id"])["manager_id"] is None


async def test_patch_refuses_bad_bodies_unknown_employees_and_manager_cycles(api: Api, db: Engine) -> None:
    top = await api.employee(role="manager", name="Top", products=[])
    mid = await api.employee(role="manager", name="Mid", products=[], manager_id=top["id"])
    dan = await api.employee(name="Dan Validated", manager_id=mid["id"])
    gone = await api.employee(role="manager", name="Gone", products=[])
    await patch(api, gone["id"], {"active": False})
    before = {e["id"]: row(db, e["id"]) for e in (top, mid, dan)}

    for body, field in [
        ({"manager_id": "emp_nobody"}, "manager_id"),
        ({"manager_id": dan["id"]}, "manager_id"),  # themselves
        ({"manager_id": gone["id"]}, "manager_id"),  # inactive
        ({"capacity": None}, "capacity"),
        ({"capacity": -1}, "capacity"),
        ({"products": ["boats"]}, "products"),
        ({"active": None}, "active"),
        ({"name": "Renamed"}, "name"),  # not a field a PATCH changes
    ]:
        assert_validation_error(await patch(api, dan["id"], body), field)
    assert_validation_error(await patch(api, dan["id"], {}))  # nothing to change
    # Top reports to nobody; making Dan (who reports to Mid, who reports to Top) Top's
    # manager would close a circle.
    err = assert_validation_error(await patch(api, top["id"], {"manager_id": dan["id"]}), "manager_id")
    assert err["message"] == f"{dan['id']} reports to {top['id']} already: that would be a cycle of managers"
    assert_validation_error(await patch(api, mid["id"], {"manager_id": dan["id"]}), "manager_id")

    missing = assert_error(await patch(api, "emp_nobody", {"capacity": 1}), 404, "not_found")
    assert missing["details"] == {"id": "emp_nobody"}
    assert {e["id"]: row(db, e["id"]) for e in (top, mid, dan)} == before


# ---------------------------------------------------------------- routing follows at once


async def test_capacity_and_product_updates_apply_to_the_next_routing_and_spare_running_referrals(api: Api) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    ann = await api.broker(state)

    await patch(api, bob["id"], {"capacity": 1})
    first = await api.refer(ryan, state)
    assert first["assignee_id"] == bob["id"]  # Bob lists the city
    second = await api.refer(ryan, state)
    assert second["assignee_id"] == ann["id"]  # Bob is at his new capacity

    await patch(api, bob["id"], {"capacity": 5})
    third = await api.refer(ryan, state)
    assert third["assignee_id"] == bob["id"]

    await patch(api, bob["id"], {"products": ["wealth"]})
    fourth = await api.refer(ryan, state)
    assert fourth["assignee_id"] == ann["id"]  # Bob no longer sells mortgages

    # What was routed before stays as it was, and Bob works it as usual.
    accepted = (await api.post(f"/v1/referrals/{first['id']}/accept", {"actor_id": bob["id"]}, expect=200)).json()
    assert (accepted["status"], accepted["assignee_id"]) == ("accepted", bob["id"])
    assert statuses(await api.referral(third["id"])) == ["created", "assigned"]


async def test_an_employee_changed_outside_the_api_reaches_the_next_routing(api: Api, db: Engine) -> None:
    """Routing caches the team while the database's team version stays the same; the
    version is raised by triggers, so a change no API call made (an operator's SQL, an
    import) applies to the very next routing too."""
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    ann = await api.broker(state)
    assert (await api.refer(ryan, state))["assignee_id"] == bob["id"]  # the team is cached now

    with db.begin() as conn:
        conn.execute(text("UPDATE employees SET capacity = 1 WHERE id = :id"), {"id": bob["id"]})
    assert (await api.refer(ryan, state))["assignee_id"] == ann["id"]  # Bob is full at his new capacity

    with db.begin() as conn:
        conn.execute(text("UPDATE employees SET capacity = 5 WHERE id = :id"), {"id": bob["id"]})
    assert (await api.refer(ryan, state))["assignee_id"] == bob["id"]


async def test_the_referral_e_mail_goes_to_the_address_the_employee_has_now(api: Api, db: Engine) -> None:
    """The e-mail a routing records goes to the address the picked employee has at that
    moment, one changed a moment before (by an import, say; the API's PATCH does not change
    addresses) included: routing reads addresses with the candidates' work, never from
    the cached team (here kept current on purpose, so a cached address would show)."""
    state = territory()
    people = await api.staff(state)
    ryan, bob = people["ryan"], people["bob"]
    first = await api.refer(ryan, state)
    moved = f"bob.new.{state}@bank.example"
    with db.begin() as conn:
        conn.execute(text("UPDATE employees SET email = :email WHERE id = :id"), {"email": moved, "id": bob["id"]})
    with db.begin() as conn:  # the team version put back: the cached team still counts as current
        conn.execute(text("UPDATE team_version SET version = version - 1"))
    second = await api.refer(ryan, state)
    assert first["assignee_id"] == second["assignee_id"] == bob["id"]
    with db.connect() as conn:
        to = dict(
            conn.execute(
                select(Notification.id, Notification.to_address).where(Notification.to_employee_id == bob["id"])
            ).all()
        )
    assert sorted(to.values()) == sorted([bob["email"], moved]), to
    assert to[f"referral:{second['id']}:assigned:2:{bob['id']}"] == moved


async def test_routing_and_reassignment_never_pick_an_inactive_employee(api: Api, db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    ryan, bob, kevin = people["ryan"], people["bob"], people["kevin"]
    ann = await api.broker(state)
    await patch(api, bob["id"], {"active": False})

    ref = await api.refer(ryan, state)
    assert (ref["status"], ref["assignee_id"]) == ("assigned", ann["id"])  # not Bob, though he lists the city

    body = {"actor_id": kevin["id"], "to_employee_id": bob["id"]}
    assert_validation_error(await api.post(f"/v1/referrals/{ref['id']}/reassign", body), "to_employee_id")
    customer, need = await api.customer_with_need(kevin["id"])
    opening = {"customer_id": customer["id"], "product": "mortgage", "owner_id": bob["id"], "need_id": need["id"]}
    assert_validation_error(await api.post("/v1/opportunities", {**opening, "amount": "1000.00"}), "owner_id")

    # Ann leaves too: her referral finds nobody (Bob is inactive), nor does a new one.
    await patch(api, ann["id"], {"active": False})
    released = await api.referral(ref["id"])
    assert statuses(released) == ["created", "assigned", "released", "unassigned"]
    assert (released["assignee_id"], released["queue"]) == (None, "unassigned-referrals")
    nobody = await api.refer(ryan, state)
    assert (nobody["status"], nobody["assignee_id"], nobody["queue"]) == ("unassigned", None, "unassigned-referrals")


# ---------------------------------------------------------------- deactivation


async def _bobs_work(api: Api, db: Engine, state: str) -> dict[str, Any]:
    """Bob's bank (Kevin his manager, Ryan who refers, Ann the other broker) and Bob's open
    work: an assigned and an accepted referral, two open mortgages and a lost one; and a
    key bound to Bob."""
    people = await api.staff(state)
    bob = people["bob"]
    ann = await api.broker(state)
    assigned = await api.refer(people["ryan"], state)
    accepted = await api.refer(people["ryan"], state)
    assert (assigned["assignee_id"], accepted["assignee_id"]) == (bob["id"], bob["id"])
    await api.post(f"/v1/referrals/{accepted['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    first = await api.opportunity(owner=bob)
    second = await api.opportunity(owner=bob)
    lost = await api.opportunity(owner=bob)
    await api.post(f"/v1/opportunities/{lost['id']}/close-lost", {"actor_id": bob["id"], "reason": "no"}, expect=200)
    key = register_api_key(db, unique("bobs-phone"), ["crm:write"], employee_id=bob["id"])
    return {
        **people,
        "ann": ann,
        "referrals": [assigned, accepted],
        "open": [first, second],
        "lost": lost,
        "key": key,
    }


async def _deactivation_is_done(api: Api, db: Engine, client: Client, inbox: Inbox, bank: dict) -> None:
    """Everything a finished deactivation of Bob shows."""
    bob, kevin, ann = bank["bob"], bank["kevin"], bank["ann"]
    assert row(db, bob["id"])["active"] is False
    assert_error(await api.get("/v1/referrals/ref_nope", key=bank["key"], expect=None), 401, "unauthenticated")

    for ref in bank["referrals"]:
        now = await api.referral(ref["id"])
        assert (now["status"], now["assignee_id"]) == ("assigned", ann["id"])
        release = now["history"][-2]
        assert {k: release[k] for k in ("status", "actor", "via", "note", "assignee_id")} == {
            "status": "released",
            "actor": ADMIN_KEY_NAME,
            "via": ADMIN_KEY_NAME,
            "note": "assignee deactivated",
            "assignee_id": bob["id"],
        }
        assert now["history"][-1]["status"] == "assigned"
    assert statuses(await api.referral(bank["referrals"][0]["id"])) == ["created", "assigned", "released", "assigned"]
    assert statuses(await api.referral(bank["referrals"][1]["id"])) == [
        "created",
        "assigned",
        "accepted",
        "released",
        "assigned",
    ]

    for opp in bank["open"]:
        assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["owner_id"] == kevin["id"]
        assert owner_changes(db, opp["id"]) == [
            (1, bob["id"], kevin["id"], ADMIN_KEY_NAME, ADMIN_KEY_NAME, "owner deactivated")
        ]
        handle = client.get_workflow_handle(opp["workflow_id"])

        async def owner_attribute(handle: Any = handle) -> str | None:
            return (await handle.describe()).typed_search_attributes.get(SA_OWNER_ID)

        await until_equal(owner_attribute, kevin["id"], f"OwnerId of {opp['id']}")
    assert (await api.get(f"/v1/opportunities/{bank['lost']['id']}")).json()["owner_id"] == bob["id"]
    assert owner_changes(db, bank["lost"]["id"]) == []

    [mail] = await inbox.settled_about(api, kevin["email"], "Employee deactivated", bob["id"])
    text = mail.get_content()
    for thing in [*bank["open"], *bank["referrals"]]:
        assert thing["id"] in text, (thing["id"], text)
    assert bank["lost"]["id"] not in text


async def test_deactivating_moves_all_open_work_and_a_second_patch_changes_nothing_more(
    api: Api, db: Engine, client: Client, smtp_inbox: Inbox
) -> None:
    bank = await _bobs_work(api, db, territory())
    bob, kevin = bank["bob"], bank["kevin"]
    await api.get("/v1/referrals/ref_nope", key=bank["key"], expect=404)  # Bob's key works, until...

    answer = (await patch(api, bob["id"], {"active": False})).json()
    assert answer["active"] is False
    assert answer["deactivation"] == {
        "keys_revoked": 1,
        "referrals_released": [r["id"] for r in bank["referrals"]],
        "referrals_left": [],
        "transferred_to": kevin["id"],
        "opportunities_transferred": [o["id"] for o in bank["open"]],
        "opportunities_kept": [],
        "notified": [kevin["id"]],
        "note": f"{bob['id']} is inactive and their keys are revoked. "
        f"Their open opportunities belong to their manager {kevin['id']}.",
    }
    await _deactivation_is_done(api, db, client, smtp_inbox, bank)

    history = count(db, ReferralHistory, ReferralHistory.referral_id.in_([r["id"] for r in bank["referrals"]]))
    outbox = count(db, Notification)
    again = (await patch(api, bob["id"], {"active": False})).json()
    assert again["deactivation"] == {
        **answer["deactivation"],
        "keys_revoked": 0,
        "referrals_released": [],
        "opportunities_transferred": [],
    }
    await _deactivation_is_done(api, db, client, smtp_inbox, bank)  # one e-mail still, one owner change each
    assert count(db, ReferralHistory, ReferralHistory.referral_id.in_([r["id"] for r in bank["referrals"]])) == history
    assert count(db, Notification) == outbox

    # The new paths (release, transfer_owner) replay as they ran.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=DATA_CONVERTER)
    for workflow_id in (bank["referrals"][1]["workflow_id"], bank["open"][0]["workflow_id"]):
        history = await within(client.get_workflow_handle(workflow_id).fetch_history(), f"history of {workflow_id}")
        await within(replayer.replay_workflow(history), f"replaying {workflow_id}")


class Fault:
    """Stands in for the call that gives one opportunity away, failing the first time."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real, self.raised = real, 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.raised == 0:
            self.raised += 1
            raise RuntimeError("the Temporal frontend went away")
        return await self.real(*args, **kwargs)


async def test_a_deactivation_that_failed_half_way_is_finished_by_the_same_patch(
    api: Api, db: Engine, client: Client, smtp_inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = await _bobs_work(api, db, territory())
    bob = bank["bob"]
    fault = Fault(deactivation.update_opportunity)
    monkeypatch.setattr(deactivation, "update_opportunity", fault)

    with pytest.raises(RuntimeError, match="went away"):
        await patch(api, bob["id"], {"active": False})
    # Half-way: inactive, keys revoked, referrals re-routed; the opportunities still Bob's
    # and nobody told.
    assert row(db, bob["id"])["active"] is False
    assert_error(await api.get("/v1/referrals/ref_nope", key=bank["key"], expect=None), 401, "unauthenticated")
    assert [(await api.referral(r["id"]))["assignee_id"] for r in bank["referrals"]] == [bank["ann"]["id"]] * 2
    assert [owner_changes(db, o["id"]) for o in bank["open"]] == [[], []]
    assert await smtp_inbox.settled_about(api, bank["kevin"]["email"], "Employee deactivated", bob["id"]) == []

    finished = (await patch(api, bob["id"], {"active": False})).json()["deactivation"]
    assert (finished["keys_revoked"], finished["referrals_released"], finished["opportunities_transferred"]) == (
        0,
        [],
        [o["id"] for o in bank["open"]],
    )
    await _deactivation_is_done(api, db, client, smtp_inbox, bank)  # the e-mail lists the referrals too
    assert fault.raised == 1


async def test_without_a_manager_the_opportunities_stay_and_the_territorys_managers_are_told(
    api: Api, db: Engine, smtp_inbox: Inbox
) -> None:
    state = territory()
    jackie = await api.employee(
        role="manager", name="Jackie", email=f"jackie.{state}@bank.example", products=[], states=[state]
    )
    ann = await api.broker(state)  # reports to nobody
    opp = await api.opportunity(owner=ann)

    answer = (await patch(api, ann["id"], {"active": False})).json()["deactivation"]
    assert answer == {
        "keys_revoked": 0,
        "referrals_released": [],
        "referrals_left": [],
        "transferred_to": None,
        "opportunities_transferred": [],
        "opportunities_kept": [opp["id"]],
        "notified": [jackie["id"]],
        "note": f"{ann['id']} is inactive and their keys are revoked. "
        "They have no active manager, so their open opportunities (1) stay theirs: give them an owner.",
    }
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["owner_id"] == ann["id"]
    assert owner_changes(db, opp["id"]) == []
    [mail] = await smtp_inbox.settled_about(
        api, jackie["email"], f"Employee deactivated: Ann ({ann['id']})", "open opportunities without an owner: 1"
    )
    assert opp["id"] in mail.get_content()
    assert "They have no active manager" in mail.get_content()
