"""Durability: the worker goes away in the middle of a journey, a backend event arrives
while no worker is running, a new worker takes over, and the journey finishes with
exactly one checkpoint per stage."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from temporalio.client import Client

from api.app import create_app
from config import Settings
from tests.helpers import Api, within
from worker import build_worker


async def test_journey_survives_a_worker_restart(client: Client, settings: Settings, keys: dict[str, str]) -> None:
    queue = f"needflow-restart-{uuid.uuid4().hex[:8]}"
    app = create_app(settings, client=client, task_queue=queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as http:
            api = Api(http, keys["all"])
            async with build_worker(client, settings, queue):
                opp = await api.opportunity()
                await api.post(
                    f"/v1/opportunities/{opp['id']}/advance",
                    {"actor_id": opp["owner_id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}},
                    expect=200,
                )
                await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-R"})

            # No worker now: the event waits in Temporal, it is not lost.
            pending = asyncio.create_task(
                api.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-R"}, expect=None)
            )
            # Nothing can take it while no worker runs: a second on, it is still waiting and
            # the opportunity has not moved. (Checking that something does not happen: a sleep.)
            await asyncio.sleep(1.0)
            assert not pending.done()
            assert (await api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "applied"

            async with build_worker(client, settings, queue):
                answer = await pending  # its own deadline (helpers.DEADLINE) runs from when it was sent
                assert answer.status_code == 202, answer.text
                assert answer.json()["result"] == "applied"
                approved = answer.json()["opportunity"]
                assert (approved["stage"], approved["signature"]["status"]) == ("approved", "sent")
                assert (await api.sign(await api.signing_link(approved))).status_code == 200
                await within(client.get_workflow_handle(opp["workflow_id"]).result(), "the workflow to finish")

            won = (await api.get(f"/v1/opportunities/{opp['id']}")).json()
            assert (won["status"], won["stage"]) == ("won", "closed_won")
            stages = [c["stage"] for c in won["checkpoints"]]
            assert stages == ["interested", "searching", "applied", "approved", "closed_won"]
