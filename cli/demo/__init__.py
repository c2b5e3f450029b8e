"""`python starter.py demo`: two stories played against the running stack through the
API, one module each (`rachel`, `kiara`). Here is what they share: `Demo`, the run's
plumbing, which keys every step by the run id so that a retried step, or the whole demo
re-run with the same --run-id, duplicates nothing; and `run_demo`, which plays them and
says where to look in the Web UI."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx

from cli import Json, Out
from cli.demo import kiara, rachel
from cli.http import get, now, post
from cli.render import stage_text

#: name → (title, the story), in the order the demo plays them.
_STORIES: dict[str, tuple[str, Callable[[Demo], Json]]] = {
    "rachel": ("Rachel's journey (seed 000)", rachel.play),
    "kiara": ("Kiara's referral (seed 003)", kiara.play),
}
STORIES = tuple(_STORIES)  # the choices of --only


class Demo:
    """One run of the demo: the API client, where lines go, and the run id every step's
    Idempotency-Key (an event's id) is made from."""

    def __init__(self, http: httpx.Client, out: Out, run_id: str) -> None:
        self.http = http
        self.out = out
        self.run = run_id

    def key(self, step: str) -> str:
        return f"demo-{self.run}-{step}"

    def get(self, url: str) -> Json:
        return get(self.http, url)

    def post(self, step: str, url: str, body: Json, expect: int = 201) -> Json:
        return post(self.http, url, body, key=self.key(step), expect=expect)

    def event(self, step: str, type_: str, opportunity_id: str, data: Json) -> Json:
        """What a backend system would send; the event id is the step's key."""
        body = {"id": self.key(step), "type": type_, "occurred_at": now(),
                "opportunity_id": opportunity_id, "data": data}  # fmt: skip
        answer = post(self.http, "/v1/events", body, expect=202)
        opp = answer["opportunity"]
        if answer["result"] == "duplicate":
            self.out(f"  event     {type_}: already applied; now {stage_text(opp)}")
        else:
            self.out(f"  event     {type_} → {stage_text(opp)}")
        return opp

    def run_all(self, only: str | None = None) -> dict[str, Json]:
        """Both stories, or `only` one; what each ended with: Rachel's mortgage
        opportunity, Kiara's referral."""
        stories = [only] if only else list(STORIES)
        what = " and ".join(_STORIES[s][0] for s in stories)
        self.out(f"needflow demo: {what} · run {self.run} · API {self.http.base_url}")
        self.get("/healthz")
        return {s: _STORIES[s][1](self) for s in stories}


def run_demo(http: httpx.Client, out: Out, *, run_id: str | None = None, ui_url: str | None = None,
             only: str | None = None) -> dict[str, Json]:  # fmt: skip
    """Play the demo; returns Rachel's mortgage opportunity (closed_won) under `rachel` and
    Kiara's referral (converted) under `kiara`, for the stories played."""
    done = Demo(http, out, run_id or secrets.token_hex(4)).run_all(only)
    searches = []
    if "rachel" in done:
        opp = done["rachel"]
        out(f"done: mortgage opportunity {opp['id']} is {opp['stage']} (workflow {opp['workflow_id']})")
        searches.append('Stage="closed_won"')
    if "kiara" in done:
        ref = done["kiara"]
        out(f"done: referral {ref['id']} is {ref['status']} into opportunity {ref['opportunity_id']} "
            f"(workflow {ref['workflow_id']})")  # fmt: skip
        searches.append('ReferralStatus="converted"')
    if ui_url:
        out(f"Temporal Web UI: {ui_url} · search {' or '.join(searches)}")
    return done
