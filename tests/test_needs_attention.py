"""A write the database refuses for good stalls nothing for ever: the workflow shows it in
the Web UI (`NeedsAttention`, current details), waits, and goes on once ops have
repaired the cause and said `starter.py attention retry` (workflows/attention.py,
activities/errors.py).

The refusal is real: the database itself is told to refuse this one opportunity's next
checkpoint (a CHECK constraint on PostgreSQL, a trigger on SQLite), as it would refuse a
value it cannot store, and the repair removes it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text
from temporalio.client import Client, WorkflowUpdateStage

from cli.main import run as cli
from config import Settings
from domain.opportunity import Actor, AdvanceCommand
from domain.types import Role
from store.models import Checkpoint
from tests.helpers import TEST_CODEC_KEYS, Api, count, until, within
from workflows import SA_NEEDS_ATTENTION
from workflows.opportunity import OpportunityWorkflow


@contextmanager
def refused_checkpoints(db: Engine, opportunity_id: str) -> Iterator[None]:
    """While inside: the database refuses every new checkpoint of `opportunity_id`."""
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    with db.begin() as conn:
        if db.dialect.name == "postgresql":
            conn.execute(
                text(
                    f"ALTER TABLE checkpoints ADD CONSTRAINT {name} CHECK (opportunity_id <> '{opportunity_id}') NOT VALID"
                )
            )
        else:
            conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON checkpoints WHEN NEW.opportunity_id = '{opportunity_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
    try:
        yield
    finally:
        with db.begin() as conn:
            if db.dialect.name == "postgresql":
                conn.execute(text(f"ALTER TABLE checkpoints DROP CONSTRAINT IF EXISTS {name}"))
            else:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))


async def _details(client: Client, workflow_id: str) -> str:
    meta = await within(client.get_workflow_handle(workflow_id).query("__temporal_workflow_metadata"), "metadata")
    return meta.current_details


async def _needs_attention(client: Client, workflow_id: str) -> bool | None:
    desc = await within(client.get_workflow_handle(workflow_id).describe(), "describe")
    return desc.typed_search_attributes.get(SA_NEEDS_ATTENTION)


def _ops(settings: Settings, client: Client) -> Callable[..., Awaitable[int]]:
    """`python starter.py ARGS…` as ops run it against this test's Temporal (in a thread:
    the command runs its own event loop)."""
    ops_settings = settings.model_copy(
        update={"temporal_address": client.service_client.config.target_host, "codec_keys": SecretStr(TEST_CODEC_KEYS)}
    )
    return lambda *argv: asyncio.to_thread(cli, list(argv), ops_settings)


async def test_a_refused_write_waits_for_a_repair_and_then_goes_on(
    api: Api, client: Client, db: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = _ops(settings, client)
    opp = await api.opportunity()
    wf_id = opp["workflow_id"]
    handle = client.get_workflow_handle(wf_id)
    assert await _needs_attention(client, wf_id) is None  # never shown until something fails for good
    cmd = AdvanceCommand(
        actor=Actor(id=opp["owner_id"], role=Role.mortgage_broker), to_stage="searching", evidence={"realtor": "R"}
    )

    with refused_checkpoints(db, opp["id"]):
        update = await within(
            handle.start_update(
                OpportunityWorkflow.advance, cmd, id="advance-1", wait_for_stage=WorkflowUpdateStage.ACCEPTED
            ),
            "the advance accepted",
        )
        await until(lambda: _needs_attention(client, wf_id), "NeedsAttention = true")
        details = await _details(client, wf_id)
        assert "needs attention" in details and "record_stage_change: IntegrityError" in details
        assert f"starter.py attention retry {wf_id}" in details
        assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 1  # nothing half-written

        # Ops find it, and a retry before the repair fails again, visibly.
        assert await ops("attention", "list") == 0
        assert wf_id in capsys.readouterr().out
        assert await ops("attention", "retry", wf_id) == 0
        assert "1 retried; 1 still waiting for a repair" in capsys.readouterr().out
        assert await _needs_attention(client, wf_id) is True

    # Repaired: the retry runs the same write again, and the advance answers.
    assert await ops("attention", "retry", wf_id) == 0
    assert "1 retried; 0 still waiting for a repair" in capsys.readouterr().out
    state = await within(update.result(), "the advance's answer")
    assert state.stage == "searching"
    assert await _needs_attention(client, wf_id) is False
    assert "needs attention" not in await _details(client, wf_id)
    timeline = (await api.get(f"/v1/opportunities/{opp['id']}")).json()["checkpoints"]
    assert [c["stage"] for c in timeline] == ["interested", "searching"]
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opp["id"]) == 2

    # Nothing left to retry: refused, and nothing written to the workflow's history.
    before = len([e async for e in handle.fetch_history_events()])
    assert await ops("attention", "retry", wf_id) == 1
    assert "nothing of this workflow is waiting for a retry" in capsys.readouterr().err
    assert len([e async for e in handle.fetch_history_events()]) == before
