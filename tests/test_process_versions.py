"""A bank tightens its mortgage process while opportunities are running: new ones take
the new version, running ones keep the version they started with."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import yaml
from temporalio.client import Client

from api.app import create_app
from config import PROJECT_ROOT, Settings
from tests.helpers import Api, assert_error


async def test_running_opportunity_keeps_its_version(
    api: Api, client: Client, settings: Settings, task_queue: str, keys: dict[str, str], tmp_path: Path
) -> None:
    old = await api.opportunity()  # started under mortgage v1

    for f in (PROJECT_ROOT / "processes").glob("*.yaml"):
        shutil.copy(f, tmp_path)
    v2 = yaml.safe_load((tmp_path / "mortgage.v1.yaml").read_text())
    v2["version"] = 2
    v2["stages"][1]["evidence"] = ["realtor", "pre_approval_letter"]
    (tmp_path / "mortgage.v2.yaml").write_text(yaml.safe_dump(v2))

    app = create_app(settings.model_copy(update={"processes_dir": tmp_path}), client=client, task_queue=task_queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as http:
            tightened = Api(http, keys["all"])
            new = await tightened.opportunity()
            assert (old["process_version"], new["process_version"]) == (1, 2)

            realtor_only = {"to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
            r = await tightened.post(
                f"/v1/opportunities/{new['id']}/advance", {"actor_id": new["owner_id"], **realtor_only}
            )
            err = assert_error(r, 409, "invalid_transition")
            assert (err["message"], err["details"]) == (
                "entering 'searching' needs evidence: pre_approval_letter",
                {"missing_evidence": ["pre_approval_letter"]},
            )
            assert (await tightened.get(f"/v1/opportunities/{new['id']}")).json()["stage"] == "interested"

            r = await tightened.post(
                f"/v1/opportunities/{old['id']}/advance", {"actor_id": old["owner_id"], **realtor_only}, expect=200
            )
            assert (r.json()["stage"], r.json()["process_version"]) == ("searching", 1)
