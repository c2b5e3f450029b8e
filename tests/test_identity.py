"""Who may act as whom (API.md v1.1, identity): a key bound to an employee acts as that
employee only; a key bound to no one names the employee in `actor_id` only with
`crm:act-as`; every checkpoint, referral history entry and consent records the actor and
`via`, the key it came through. Key management over HTTP, and the outbox for admins."""

from __future__ import annotations

from sqlalchemy import Engine, update
from temporalio.client import Client

from store.keys import register_api_key
from store.models import ApiKey, Checkpoint, Employee
from tests.helpers import Api, assert_error, assert_validation_error, count, history_length, territory, unique


def _bound_key(db: Engine, employee: dict, *scopes: str) -> tuple[str, str]:
    name = unique(f"{employee['name'].split()[0].lower()}-phone")
    return register_api_key(db, name, list(scopes or ("crm:write",)), employee_id=employee["id"]), name


async def test_a_bound_key_acts_as_its_employee_and_the_checkpoint_says_through_which_key(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Bound")
    opp = await api.opportunity(owner=dan)
    key, name = _bound_key(db, dan)
    body = {"to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}  # no actor_id: the key's employee
    moved = (await api.post(f"/v1/opportunities/{opp['id']}/advance", body, key=key, expect=200)).json()
    last = moved["checkpoints"][-1]
    assert (last["stage"], last["actor"], last["via"]) == ("searching", dan["id"], name)
    # The opening came through the test's key, recorded too.
    assert (moved["checkpoints"][0]["actor"], moved["checkpoints"][0]["via"]) == (dan["id"], "test-all")


async def test_a_bound_key_naming_someone_else_is_403_and_changes_nothing(api: Api, db: Engine, client: Client) -> None:
    dan = await api.employee(name="Dan Bound")
    kim = await api.employee(role="manager", name="Kim Manager", products=[])
    opp = await api.opportunity(owner=dan)
    key, _ = _bound_key(db, dan)
    events_before = await history_length(client, opp["workflow_id"])
    body = {"actor_id": kim["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
    r = await api.post(f"/v1/opportunities/{opp['id']}/advance", body, key=key, idem=unique("idem"))
    err = assert_error(r, 403, "forbidden")
    assert err["details"] == {"actor_id": kim["id"], "key_employee_id": dan["id"]}
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1
    assert await history_length(client, opp["workflow_id"]) == events_before
    # Naming itself is fine.
    body["actor_id"] = dan["id"]
    await api.post(f"/v1/opportunities/{opp['id']}/advance", body, key=key, expect=200)


async def test_an_unbound_key_names_the_actor_only_with_act_as(api: Api, db: Engine, keys: dict[str, str]) -> None:
    dan = await api.employee(name="Dan Unbound")
    opp = await api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/advance"
    body = {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}

    err = assert_error(await api.post(path, body, key=keys["crm:write"]), 403, "forbidden")
    assert err["details"] == {"required_scope": "crm:act-as"}
    without_actor = {k: v for k, v in body.items() if k != "actor_id"}
    assert_validation_error(await api.post(path, without_actor, key=keys["crm:write"]), "actor_id")
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1

    front_end = unique("branch-portal")
    key = register_api_key(db, front_end, ["crm:write", "crm:act-as"])
    moved = (await api.post(path, body, key=key, expect=200)).json()
    assert (moved["checkpoints"][-1]["actor"], moved["checkpoints"][-1]["via"]) == (dan["id"], front_end)


async def test_an_inactive_employee_acts_on_nothing(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Leaving")
    opp = await api.opportunity(owner=dan)
    key, _ = _bound_key(db, dan)
    with db.begin() as conn:
        conn.execute(update(Employee).where(Employee.id == dan["id"]).values(active=False))
    body = {"reason": "moving on"}
    err = assert_error(await api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, key=key), 403, "forbidden")
    assert err["details"] == {"actor_id": dan["id"]}
    assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["status"] == "open"


async def test_referral_history_and_consents_record_actor_and_via(api: Api, db: Engine, keys: dict[str, str]) -> None:
    state = territory()
    people = await api.staff(state)
    bob = people["bob"]
    ref = await api.refer(people["ryan"], state)
    key, name = _bound_key(db, bob)
    accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {}, key=key, expect=200)).json()
    created, routed, accept = accepted["history"]
    assert (created["actor"], created["via"]) == (people["ryan"]["id"], "test-all")
    assert (routed["actor"], routed["via"]) == ("needflow", None)  # routing is the workflow's own move
    assert (accept["status"], accept["actor"], accept["via"]) == ("accepted", bob["id"], name)

    # A consent brought by a backend system: it is the actor, through its key.
    matt = await api.employee(role="banker", lob="retail", name="Matt", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    sms = {"phone": "+12125550100", "message_id": unique("SM"), "text": "YES", "received_at": "2026-11-25T09:00:00Z"}
    body = {"id": unique("evt"), "type": "consent.sms_authorization", "occurred_at": "2026-11-25T10:00:00Z"}
    await api.post("/v1/events", {**body, "opportunity_id": opp["id"], "data": sms}, key=keys["mobile-app"], expect=202)
    [consent] = (await api.get(f"/v1/customers/{opp['customer_id']}/journey")).json()["consents"]
    assert (consent["actor"], consent["via"]) == ("mobile-app", "mobile-app")


# ---------------------------------------------------------------- key management


async def test_keys_are_issued_once_listed_without_the_key_and_revoked_at_once(api: Api, db: Engine) -> None:
    dan = await api.employee(name="Dan Keyed")
    name = unique("dans-tablet")
    issued = (
        await api.post("/v1/api-keys", {"name": name, "scopes": ["crm:write"], "employee_id": dan["id"]}, expect=201)
    ).json()
    key = issued["key"]
    assert key.startswith("nf_")
    assert {k: issued[k] for k in ("name", "scopes", "employee_id", "revoked_at")} == {
        "name": name,
        "scopes": ["crm:write"],
        "employee_id": dan["id"],
        "revoked_at": None,
    }
    await api.get(f"/v1/referrals/{unique('ref')}", key=key, expect=404)  # the key works

    listing = await api.get("/v1/api-keys")
    assert key not in listing.text
    [row] = [k for k in listing.json()["items"] if k["id"] == issued["id"]]
    assert set(row) == {"id", "name", "scopes", "employee_id", "created_at", "revoked_at"}

    assert (await api.request("DELETE", f"/v1/api-keys/{issued['id']}", headers=api.headers())).status_code == 204
    assert_error(await api.get(f"/v1/referrals/{unique('ref')}", key=key, expect=None), 401, "unauthenticated")
    [row] = [k for k in (await api.get("/v1/api-keys")).json()["items"] if k["id"] == issued["id"]]
    assert row["revoked_at"] is not None and row["revoked_at"].startswith("20")
    assert count(db, ApiKey, ApiKey.id == issued["id"], ApiKey.revoked_at.is_not(None)) == 1

    missing = await api.request("DELETE", "/v1/api-keys/no-such-key", headers=api.headers())
    assert assert_error(missing, 404, "not_found")["details"] == {"id": "no-such-key"}


async def test_a_key_for_an_unknown_employee_or_scope_is_refused(api: Api, db: Engine) -> None:
    name = unique("nobodys")
    r = await api.post("/v1/api-keys", {"name": name, "scopes": ["crm:write"], "employee_id": "emp_nobody"})
    assert_validation_error(r, "employee_id")
    assert_validation_error(await api.post("/v1/api-keys", {"name": name, "scopes": ["root"]}), "scopes")
    assert count(db, ApiKey, ApiKey.name == name) == 0


async def test_the_outbox_is_for_admins_and_filters_by_address(api: Api, keys: dict[str, str], db: Engine) -> None:
    state = territory()
    people = await api.staff(state)
    await api.refer(people["ryan"], state)
    bob = people["bob"]["email"]
    items = (await api.get(f"/v1/outbox?to={bob}", key=keys["admin"])).json()["items"]
    assert [m["to_address"] for m in items] == [bob]
    assert items[0]["subject"].startswith("New referral: mortgage")
    for other in ("crm:write", "reports:read"):
        err = assert_error(await api.get(f"/v1/outbox?to={bob}", key=keys[other], expect=None), 403, "forbidden")
        assert err["details"] == {"required_scope": "admin"}
