"""The floor of bench/lifecycle.py: the least a five-stage lifecycle costs on Temporal.

The shape of a mortgage's lifecycle and nothing else: started with an update-with-start
that answers once the first stage's activity has run (needflow's `opened`), then four
Updates, each validated and answered once its stage's activity has run (needflow's
`advance`, `apply_event`, `signature_outcome`); five activities that do nothing, and the
run ends after the fifth stage. Temporal's default data converter (JSON, no encryption),
no search attributes, no store: what is left is what Temporal itself costs. Started with
`local=True`, the activities are local activities: what that design would cost (needflow
tried it for its store writes and went back; workflows/common.py `record` says why).

A module of its own (not in lifecycle.py) because the workflow sandbox re-imports a
workflow's module: this one imports only temporalio. The leading `_` keeps `make bench`
from running it as a bench script.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

STAGES = 5


@activity.defn(name="floor.record_stage")
async def record_stage(stage: int) -> None:
    """Where needflow records a checkpoint: nothing."""


@workflow.defn(name="FloorLifecycle")
class FloorLifecycle:
    @workflow.init
    def __init__(self, local: bool = False) -> None:
        self.local = local
        self.stage = 0

    @workflow.run
    async def run(self, local: bool = False) -> int:
        await self._enter(1)
        await workflow.wait_condition(lambda: self.stage == STAGES and workflow.all_handlers_finished())
        return self.stage

    async def _enter(self, stage: int) -> None:
        timeout = timedelta(seconds=30)
        if self.local:
            await workflow.execute_local_activity(record_stage, stage, start_to_close_timeout=timeout)
        else:
            await workflow.execute_activity(record_stage, stage, start_to_close_timeout=timeout)
        self.stage = stage

    @workflow.update
    async def opened(self) -> int:
        await workflow.wait_condition(lambda: self.stage >= 1)
        return self.stage

    @workflow.update
    async def advance(self, stage: int) -> int:
        await self._enter(stage)
        return self.stage

    @advance.validator
    def _validate_advance(self, stage: int) -> None:
        if stage != self.stage + 1 or stage > STAGES:
            raise ValueError(f"stage {stage} does not follow stage {self.stage}")
