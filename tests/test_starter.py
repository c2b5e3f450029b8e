"""starter.py, the command-line client, against a real stack over real HTTP.

The stack: a uvicorn server and a worker in a background thread with their own event
loop and their own Temporal client, on the session's Temporal dev server and database
but on a task queue of their own. Its own worker because the session worker runs on the
pytest-asyncio loop, which is idle while a sync test runs, and because its signing links
point at http://testserver; this stack's point at itself, so the demo signs over HTTP
like a browser would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, update
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import starter
from api.app import create_app
from config import Settings
from domain.scoring import priority, referrer_score
from store.db import make_sync_engine
from store.keys import ALL_SCOPES
from store.models import Opportunity, Referral
from tests.helpers import count
from worker import build_worker
from workflows.client import DATA_CONVERTER

MORTGAGE_STAGES = ["interested", "searching", "applied", "approved", "closed_won"]


class LiveStack:
    """API (uvicorn on a free port) and worker, served from a thread until stop()."""

    def __init__(self, settings: Settings, temporal_address: str, namespace: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.settings = settings.model_copy(update={"public_base_url": self.url, "api_port": port})
        self.temporal_address = temporal_address
        self.namespace = namespace
        self.task_queue = f"needflow-cli-{uuid.uuid4().hex[:8]}"
        self.server: uvicorn.Server | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="live-stack", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    async def _serve(self) -> None:
        client = await Client.connect(self.temporal_address, namespace=self.namespace, data_converter=DATA_CONVERTER)
        app = create_app(self.settings, client=client, task_queue=self.task_queue)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        async with build_worker(client, self.settings, self.task_queue):
            await self.server.serve(sockets=[self.sock])

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not (self.server is not None and self.server.started):
            if not self.thread.is_alive():
                raise RuntimeError(f"the live stack did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the live stack did not start in time")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(argv: list[str], settings: Settings, environ: dict[str, str] | None = None) -> Run:
    """`python starter.py ARGV`, in process: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = starter.main(argv, settings=settings, environ=environ or {})
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def stack(temporal_env: WorkflowEnvironment, settings: Settings) -> Iterator[LiveStack]:
    client = temporal_env.client
    live = LiveStack(settings, client.service_client.config.target_host, client.namespace)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def cli(stack: LiveStack, keys: dict[str, str]) -> Callable[..., Run]:
    """Run a command against the live stack, with the all-scopes key unless told."""

    def run(*args: str, key: str | None = None) -> Run:
        return run_cli(["--api", stack.url, "--key", key or keys["all"], *args], stack.settings)

    return run


@pytest.fixture(scope="module")
def demo(stack: LiveStack, keys: dict[str, str]) -> tuple[Run, str]:
    """`starter.py demo`, played once for the module: its run and its run id."""
    run_id = uuid.uuid4().hex[:8]
    argv = ["--api", stack.url, "--key", keys["all"], "demo", "--run-id", run_id]
    return run_cli(argv, stack.settings), run_id


def done_line(run: Run, what: str) -> str:
    """The demo's `done: <what> ...` line."""
    [line] = [line for line in run.out.splitlines() if line.startswith(f"done: {what} ")]
    return line


def opportunity_of(run: Run) -> str:
    """Rachel's mortgage opportunity."""
    return done_line(run, "mortgage opportunity").split()[3]


def referral_of(run: Run) -> tuple[str, str]:
    """Kiara's referral and the opportunity it converted into."""
    words = done_line(run, "referral").split()
    assert words[3:6] == ["is", "converted", "into"], words
    return words[2], words[7]


def person(run: Run, name: str) -> str:
    """An employee's id, from the demo's people lines (`  Bob       mortgage broker ...  emp_…`)."""
    [line] = [line for line in run.out.splitlines() if line.startswith(f"  {name} ")]
    return line.split()[-1]


def factors_line(factors: list[dict]) -> str:
    """How the CLI shows lead score factors: `feature=value effect weight`, a value quoted
    when it holds a separator; or that nothing moved the score."""
    if not factors:
        return "no factors: nothing moved it off the prior"
    shown = lambda v: f'"{v}"' if re.search(r"[,=\s]", v) else v  # noqa: E731
    return ", ".join(f"{f['feature']}={shown(f['value'])} {f['effect']} {f['weight']:g}" for f in factors)


def bank_tallies(db: Engine, window_days: int) -> tuple[int, int]:
    """(converted, decided): the bank's referrals decided within the referrer window."""
    since = datetime.now(UTC) - timedelta(days=window_days)
    decided = count(db, Referral, Referral.decided_at >= since)
    return count(db, Referral, Referral.decided_at >= since, Referral.status == "converted"), decided


def section(out: str, start: str, end: str | None = None) -> str:
    """The output from the line `start` to the line `end` (or the end)."""
    begin = out.index(f"\n{start}")
    return out[begin : out.index(f"\n{end}", begin + 1)] if end else out[begin:]


# ------------------------------------------------------------------------------ demo


def test_demo_plays_rachels_journey_to_closed_won(demo: tuple[Run, str]) -> None:
    run, _ = demo
    assert run.code == 0, run.err
    assert run.err == ""
    opp_id = opportunity_of(run)
    assert "is closed_won" in done_line(run, "mortgage opportunity")
    last = run.out.splitlines()[-1]
    assert last.startswith("Temporal Web UI: http://127.0.0.1:")
    assert last.endswith('search Stage="closed_won" or ReferralStatus="converted"')

    # The steps: checking first (her first product), then the mortgage's stages in order.
    out = run.out
    checking, mortgage = out.index("\nchecking account"), out.index("\nmortgage\n")
    journey = out.index("\ncustomer journey")
    assert checking < mortgage < journey
    steps = out[mortgage:journey]
    positions = [steps.index(f" {stage} (") for stage in MORTGAGE_STAGES]
    assert positions == sorted(positions)
    assert "→ authorised (60%)" in out[checking:mortgage] and "→ opened (100%, won)" in out[checking:mortgage]

    # The journey: the mortgage's checkpoints table, and her two consents.
    table = out[out.index(f"  mortgage {opp_id}") : out.index("\n  consents")].splitlines()
    assert [line.split()[0] for line in table[2:]] == MORTGAGE_STAGES
    consents = [line.split() for line in section(out, "  consents\n", "referral people").splitlines()[3:]]
    assert [c[:2] for c in consents] == [["sms", "checking"], ["esignature", "mortgage"]]
    assert 'signer_name="Rachel Adams",' in section(out, "  consents\n", "referral people").splitlines()[-1]


def test_what_the_demo_did_is_in_the_system_of_record(demo: tuple[Run, str], stack: LiveStack,
                                                      keys: dict[str, str]) -> None:  # fmt: skip
    opp_id = opportunity_of(demo[0])
    with stack.http(keys["all"]) as http:
        opp = http.get(f"/v1/opportunities/{opp_id}").json()
        journey = http.get(f"/v1/customers/{opp['customer_id']}/journey").json()
    assert (opp["stage"], opp["status"], opp["amount"]) == ("closed_won", "won", "500000.00")
    assert [c["stage"] for c in opp["checkpoints"]] == MORTGAGE_STAGES
    assert opp["checkpoints"][1]["evidence"] == {"realtor": "Jane Realty, Brooklyn"}

    assert journey["customer"]["name"] == "Rachel Adams"
    assert [n["kind"] for n in journey["needs"]] == ["everyday_banking", "buy_home"]
    assert journey["needs"][1]["description"] == "Buy a home in New York"
    assert [i["channel"] for i in journey["interactions"]] == ["chatbot", "call"]
    checking = next(o for o in journey["opportunities"] if o["product"] == "checking")
    assert [c["stage"] for c in checking["checkpoints"]] == ["interested", "authorised", "opened"]
    assert checking["status"] == "won"
    sms, esig = sorted(journey["consents"], key=lambda c: c["channel"] != "sms")
    assert (sms["channel"], sms["opportunity_id"]) == ("sms", checking["id"])
    assert (esig["channel"], esig["opportunity_id"]) == ("esignature", opp_id)
    assert esig["evidence"]["signer_name"] == "Rachel Adams"
    assert esig["evidence"]["client_address"] == "127.0.0.1"  # signed over real HTTP


#: The demo's last line about Ryan: his score before and after the conversion, and why.
RYANS_SCORES = re.compile(r"\n  referrer  Ryan's referrer score (\d+) → (\d+) \(([^)]+)\)")


def trend(before: int, after: int) -> str:
    """What the demo says of a conversion's effect on Ryan's score (cli/demo/kiara.py)."""
    if after > before:
        return "up: his referral converted"
    assert after == before == 100, (before, after)  # a conversion never lowers a score
    return "unchanged: every referral the bank decided converted, so he was at 100 already"


def test_demo_plays_kiaras_referral_from_ryan_to_bob(demo: tuple[Run, str], stack: LiveStack,
                                                    keys: dict[str, str], db: Engine) -> None:  # fmt: skip
    run, run_id = demo
    assert run.code == 0, run.err
    ref_id, opp_id = referral_of(run)
    bob, ryan, kevin = person(run, "Bob"), person(run, "Ryan"), person(run, "Kevin")
    assert len({bob, ryan, kevin}) == 3
    out = section(run.out, "referral people", "done: ")
    assert f"San Francisco, state CA-{run_id} (a state made up for this run" in out

    # Routing picked this run's Bob, and says why; he got the e-mail.
    assert "  referred  by Ryan · Kiara Jones (prospect: " in out
    assert ("  routed    → Bob: rule 'product-in-territory' (#1): least open work (0 of capacity 20) among 1 "
            "eligible in San Francisco\n") in out  # fmt: skip
    lead = re.search(r"\n  scores    lead (\d+)/99 \((.+)\)\n", out)
    assert lead, out
    first = re.search(r"\n {12}referrer (\d+)/100 \(Ryan has no decided referral yet.*\) · priority (\d+\.\d\d)\n", out)
    assert first, out
    subject = "New referral: mortgage worth 500,000.00 for Kiara Jones"
    assert f'  e-mail    to Bob <bob@cumulus.example>: "{subject}" (sent ' in out
    # He accepted, and she is at the top of his list; then he converted her.
    converted = '  converted by Bob: need buy_home "Buy her first home in San Francisco"\n'
    order = ["  routed ", "  e-mail ", "  accepted  by Bob\n", "  Bob's open", converted, "  referrer  Ryan"]
    steps = [out.index(s) for s in order]
    assert steps == sorted(steps)
    listed = section(out, "  Bob's open referrals", "  converted").splitlines()
    assert listed[2].split() == ["PRIORITY", "LEAD", "REFERRER", "STATUS", "REFERRAL", "FOR", "VALUE"]
    assert listed[3].split()[3:] == ["accepted", ref_id, "Kiara", "Jones", "500000.00"]
    opportunity = f"{opp_id} · mortgage interested (10%) · amount 500000.00 · owner Bob · referral {ref_id}"
    assert f"\n    opportunity  {opportunity}\n" in out
    scores = RYANS_SCORES.search(run.out)
    assert scores, run.out
    # The documented formula: the demo's conversion is the bank's latest decision (nothing
    # decided one since: no test runs beside this one), Ryan's first.
    bank_converted, bank_decided = bank_tallies(db, stack.settings.referrer_window_days)
    ryans_first = referrer_score(0, 0, bank_converted - 1, bank_decided - 1)
    assert (int(first[1]), int(scores[1]), int(scores[2])) == (
        ryans_first, ryans_first, referrer_score(1, 1, bank_converted, bank_decided))  # fmt: skip
    # A conversion raises his score, unless every referral the bank decided so far (the
    # tests before this one, in this database) converted: then he starts at 100 already.
    assert scores[3] == trend(int(scores[1]), int(scores[2])), run.out

    with stack.http(keys["all"]) as http:
        ref = http.get(f"/v1/referrals/{ref_id}").json()
        opp = http.get(f"/v1/opportunities/{opp_id}").json()
        customer = http.get(f"/v1/customers/{ref['customer_id']}").json()
        journey = http.get(f"/v1/customers/{customer['id']}/journey").json()
        mails = http.get("/v1/outbox", params={"to_employee_id": bob}).json()["items"]
        bobs = http.get(f"/v1/employees/{bob}/referrals").json()["items"]
    assert (ref["status"], ref["assignee_id"]) == ("converted", bob)
    assert ref["referrer"] == {"type": "employee", "id": ryan}
    assert [h["status"] for h in ref["history"]] == ["created", "assigned", "accepted", "converted"]
    assert [h["actor"] for h in ref["history"]] == [ryan, "needflow", bob, bob]
    assert ref["lead_score"] == int(lead[1]) and ref["opportunity_id"] == opp_id
    assert lead[2] == factors_line(ref["lead_score_factors"])
    # The priority shown at creation: the formula's, at an age between none and now's.
    sla = timedelta(seconds=stack.settings.referral_accept_sla)
    age_now = datetime.now(UTC) - datetime.fromisoformat(ref["created_at"])
    lo, hi = (priority(ref["lead_score"], int(first[1]), age, sla) for age in (timedelta(0), age_now))
    assert lo <= float(first[2]) <= hi, (first[2], lo, hi)
    assert (opp["referral_id"], opp["owner_id"], opp["product"], opp["stage"], opp["amount"]) == (
        ref_id, bob, "mortgage", "interested", "500000.00")  # fmt: skip
    assert (customer["name"], customer["city"]) == ("Kiara Jones", "San Francisco")
    assert customer["state"] == f"CA-{run_id}"
    assert f"    customer     {customer['id']} · Kiara Jones · household {customer['household_id']}\n" in out
    assert f"    need         {opp['need_id']}\n" in out
    assert [(n["kind"], n["id"]) for n in journey["needs"]] == [("buy_home", opp["need_id"])]
    assert [r["id"] for r in journey["referrals"]] == [ref_id]
    assert [o["id"] for o in journey["opportunities"]] == [opp_id]
    assert [m["subject"] for m in mails] == ["New referral: mortgage worth 500,000.00 for Kiara Jones"]
    assert bobs == []  # converted: no longer open


def test_the_demo_again_with_its_run_id_duplicates_nothing(demo: tuple[Run, str], stack: LiveStack,
                                                          keys: dict[str, str]) -> None:  # fmt: skip
    first, run_id = demo
    again = run_cli(["--api", stack.url, "--key", keys["all"], "demo", "--run-id", run_id], stack.settings)
    assert again.code == 0, again.err
    assert opportunity_of(again) == opportunity_of(first)
    assert ": already applied; now closed_won" in again.out and "signed    already" in again.out
    with stack.http(keys["all"]) as http:
        opp = http.get(f"/v1/opportunities/{opportunity_of(again)}").json()
        journey = http.get(f"/v1/customers/{opp['customer_id']}/journey").json()
    counts = [len(journey[k]) for k in ("needs", "interactions", "opportunities", "consents")]
    assert counts == [2, 2, 2, 2]
    assert [c["stage"] for c in opp["checkpoints"]] == MORTGAGE_STAGES

    # Kiara's referral: the same people, the same referral, nothing done twice.
    assert referral_of(again) == referral_of(first)
    staff = ("Kevin", "Ryan", "Bob")
    assert [person(again, n) for n in staff] == [person(first, n) for n in staff]
    assert "  accepted  by Bob in an earlier run\n" in again.out
    assert "    none: Kiara's was converted in an earlier run\n" in again.out
    assert "  converted by Bob in an earlier run: need buy_home" in again.out
    assert "  referred  by Ryan (in an earlier run) · Kiara Jones" in again.out
    before_after = RYANS_SCORES.search(first.out)
    assert before_after, first.out
    # The replayed answers give the first run's scores again; `now` is today's.
    scores = f"\n  referrer  Ryan's referrer score {before_after[1]} → {before_after[2]} ({before_after[3]}), "
    assert scores + "in an earlier run; now " in again.out
    ref_id, opp_id = referral_of(again)
    bob = person(again, "Bob")
    with stack.http(keys["all"]) as http:
        ref = http.get(f"/v1/referrals/{ref_id}").json()
        journey = http.get(f"/v1/customers/{ref['customer_id']}/journey").json()
        mails = http.get("/v1/outbox", params={"to_employee_id": bob}).json()["items"]
    assert [h["status"] for h in ref["history"]] == ["created", "assigned", "accepted", "converted"]
    counts = [len(journey[k]) for k in ("needs", "referrals", "opportunities")]
    assert counts == [1, 1, 1] and journey["opportunities"][0]["id"] == opp_id
    assert [m["subject"] for m in mails] == ["New referral: mortgage worth 500,000.00 for Kiara Jones"]


def test_demo_only_one_story(stack: LiveStack, keys: dict[str, str], demo: tuple[Run, str]) -> None:
    run_id = uuid.uuid4().hex[:8]
    argv = ["--api", stack.url, "--key", keys["all"], "demo", "--run-id", run_id]
    run = run_cli([*argv, "--only", "kiara"], stack.settings)
    assert run.code == 0, run.err
    assert run.out.startswith(f"needflow demo: Kiara's referral (seed 003) · run {run_id} · API ")
    assert "Rachel" not in run.out and "done: mortgage" not in run.out
    assert run.out.splitlines()[-1].endswith('search ReferralStatus="converted"')
    # Another Bob in San Francisco (the module's demo), but in another run's state: this
    # run's referral went to this run's Bob.
    assert person(run, "Bob") != person(demo[0], "Bob")
    with stack.http(keys["all"]) as http:
        ref = http.get(f"/v1/referrals/{referral_of(run)[0]}").json()
    assert (ref["status"], ref["assignee_id"]) == ("converted", person(run, "Bob"))

    run = run_cli([*argv, "--only", "rachel"], stack.settings)
    assert run.code == 0, run.err
    assert run.out.startswith(f"needflow demo: Rachel's journey (seed 000) · run {run_id} · API ")
    assert "Kiara" not in run.out and "done: referral" not in run.out
    assert "is closed_won" in done_line(run, "mortgage opportunity")
    assert run.out.splitlines()[-1].endswith('search Stage="closed_won"')


# ------------------------------------------------------------------------------ referral show


def test_referral_show_prints_status_scores_and_history(cli: Callable[..., Run], demo: tuple[Run, str], stack: LiveStack,
                                                       keys: dict[str, str]) -> None:  # fmt: skip
    run_id = demo[1]
    ref_id, opp_id = referral_of(demo[0])
    bob, ryan = person(demo[0], "Bob"), person(demo[0], "Ryan")
    run = cli("referral", "show", ref_id)
    assert run.code == 0, run.err
    with stack.http(keys["all"]) as http:
        ref = http.get(f"/v1/referrals/{ref_id}").json()
    lines = run.out.splitlines()
    assert lines[0].startswith(f"referral {ref_id} · mortgage · value 500000.00 "
                               f"· referred by employee {ryan} · created ")  # fmt: skip
    assert lines[1] == ("for Kiara Jones (prospect: +14155550123, kiara.jones@example.com, Acme Robotics, "
                        f"San Francisco CA-{run_id}) · customer {ref['customer_id']}")  # fmt: skip
    assert lines[2].startswith("notes: Ryan's wealth client")
    status = f"status converted · assignee {bob} · opportunity {opp_id}"
    assert lines[3] == f"{status} · workflow referral-{ref_id}"
    assert lines[4].startswith(f"lead score {ref['lead_score']}/99 (")
    scores = f"referrer score {ref['referrer_score']}/100 · priority {ref['priority']:.2f}"
    assert lines[4].endswith(f") · {scores}")
    assert lines[5].split() == ["STATUS", "AT", "ACTOR", "ASSIGNEE", "NOTE"]
    rows = [line.split() for line in lines[6:]]
    assert [(r[0], r[4], r[5]) for r in rows] == [
        ("created", ryan, "-"), ("assigned", "needflow", bob), ("accepted", bob, bob), ("converted", bob, bob)
    ]  # fmt: skip
    assert "rule 'product-in-territory' (#1): least open work" in lines[7]
    assert lines[9].endswith(f"opportunity {opp_id}")


def test_referral_show_of_an_unassigned_referral_names_its_queue(cli: Callable[..., Run], stack: LiveStack,
                                                                 keys: dict[str, str]) -> None:  # fmt: skip
    state = f"S-{uuid.uuid4().hex[:6]}"  # nobody sells insurance in a state of its own
    with stack.http(keys["all"]) as http:
        r = http.post("/v1/referrals", json={"referrer": {"type": "partner", "id": "realtor-9"},
                                             "prospect": {"name": "Ann Lee", "state": state},
                                             "expressed_interest": "insurance"})  # fmt: skip
        assert r.status_code == 201, r.text
    ref = r.json()
    run = cli("referral", "show", ref["id"])
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith(f"referral {ref['id']} · insurance · referred by partner realtor-9 · created ")
    assert lines[1] == f"for Ann Lee (prospect: {state})"
    status = "status unassigned · assignee - · queue unassigned-referrals"
    assert lines[2] == f"{status} · workflow {ref['workflow_id']}"
    assert [line.split()[0] for line in lines[5:]] == ["created", "unassigned"]
    assert "sent to the fallback queue 'unassigned-referrals'" in lines[-1]


def test_referral_show_of_an_unknown_referral_is_a_404(cli: Callable[..., Run]) -> None:
    run = cli("referral", "show", "ref_nope")
    assert (run.code, run.out, run.err) == (1, "", "error: 404 not_found: no referral 'ref_nope'\n")


# ------------------------------------------------------------------------------ timeline


def test_timeline_shows_the_checkpoints_and_signature(cli: Callable[..., Run], demo: tuple[Run, str]) -> None:
    opp_id = opportunity_of(demo[0])
    run = cli("timeline", opp_id)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith(f"opportunity {opp_id} · mortgage (process v1)")
    assert "amount 500000.00" in lines[0]
    assert lines[1].startswith("stage closed_won (100%) · status won")
    assert lines[2].split() == ["STAGE", "ENTERED", "AT", "TRIGGER", "ACTOR", "EVIDENCE"]
    rows = [line.split() for line in lines[3:8]]  # stage, date, time, UTC, trigger, actor, evidence…
    assert [r[0] for r in rows] == MORTGAGE_STAGES
    assert [r[4] for r in rows] == ["manual", "manual", "event", "event", "event"]
    assert 'realtor="Jane Realty, Brooklyn"' in lines[4] and "application_id=APP-" in lines[5]
    assert 'signer_name="Rachel Adams"' in lines[7] and "document_sha256=" in lines[7]
    assert lines[8].startswith("signature: local envelope") and "· completed" in lines[8]


def test_timeline_of_an_unknown_opportunity_is_a_404(cli: Callable[..., Run]) -> None:
    run = cli("timeline", "opp_nope")
    assert (run.code, run.out, run.err) == (1, "", "error: 404 not_found: no opportunity 'opp_nope'\n")


# ------------------------------------------------------------------------------ event send


def searching_mortgage(stack: LiveStack, key: str) -> dict:
    """A fresh mortgage opportunity in `searching`, made through the API."""
    with stack.http(key) as http:
        emp = http.post("/v1/employees", json={
            "name": "Bob", "email": "bob@cumulus.example", "role": "mortgage_broker",
            "line_of_business": "mortgage", "products": ["mortgage"], "cities": [], "states": [],
            "capacity": 5,
        }).json()  # fmt: skip
        cus = http.post("/v1/customers", json={"name": "Kiara"}).json()
        need = http.post(
            f"/v1/customers/{cus['id']}/needs",
            json={"kind": "buy_home", "description": "A flat", "recorded_by": emp["id"]},
        ).json()
        opp = http.post("/v1/opportunities", json={"customer_id": cus["id"], "product": "mortgage",
                                                   "owner_id": emp["id"], "need_id": need["id"],
                                                   "amount": "250000.00"})  # fmt: skip
        assert opp.status_code == 201, opp.text
        r = http.post(
            f"/v1/opportunities/{opp.json()['id']}/advance",
            json={"actor_id": emp["id"], "to_stage": "searching", "evidence": {"realtor": "R"}},
        )
        assert r.status_code == 200, r.text
        return r.json()


def test_event_send_applies_once_then_answers_duplicate(
    cli: Callable[..., Run], stack: LiveStack, keys: dict[str, str]
) -> None:
    opp = searching_mortgage(stack, keys["all"])
    evt = f"evt-{uuid.uuid4().hex}"
    send = ("event", "send", "--type", "mortgage.application_submitted", "--opportunity", opp["id"],
            "--id", evt, "--set", "application_id=APP-77")  # fmt: skip
    run = cli(*send)
    assert run.code == 0, run.err
    assert run.out.startswith(f"applied: event {evt} (mortgage.application_submitted)")
    assert "stage applied (50%)" in run.out

    run = cli(*send)
    assert run.code == 0, run.err
    assert run.out.startswith(f"duplicate: event {evt}") and "stage applied (50%)" in run.out

    # --data carries typed JSON; a customer event names the customer.
    run = cli("event", "send", "--type", "nps.response", "--customer", opp["customer_id"],
              "--data", '{"score": 9, "comment": "Easy"}')  # fmt: skip
    assert run.code == 0, run.err
    assert run.out.startswith("applied: event evt-") and f"customer {opp['customer_id']}" in run.out


def test_event_send_prints_the_apis_refusal_and_exits_1(
    cli: Callable[..., Run], stack: LiveStack, keys: dict[str, str]
) -> None:
    opp = searching_mortgage(stack, keys["all"])
    submitted = ("event", "send", "--type", "mortgage.application_submitted", "--opportunity", opp["id"])

    # The CLI shows the API's code and message: the message is all it prints of the refusal.
    run = cli("event", "send", "--type", "mortgage.application_approved", "--opportunity", opp["id"],
              "--set", "approval_id=APR-1")  # fmt: skip
    assert (run.code, run.out, run.err) == (1, "", "error: 409 invalid_transition: 'mortgage.application_approved' "
                                                   "enters 'approved', which is not the next stage after 'searching'\n")  # fmt: skip

    run = cli(*submitted)
    assert (run.code, run.out, run.err) == (1, "", "error: 422 validation_error: data.application_id: Field required\n")

    run = cli(*submitted, "--set", "application_id=A", key=keys["crm:write"])
    assert (run.code, run.err) == (1, "error: 403 forbidden: this API key lacks the scope 'events:write'\n")

    run = cli(*submitted, "--data", "[1]")
    assert (run.code, run.err) == (2, 'error: --data must be a JSON object, e.g. \'{"application_id": "APP-9"}\'\n')

    with stack.http(keys["all"]) as http:  # and nothing changed
        assert http.get(f"/v1/opportunities/{opp['id']}").json()["stage"] == "searching"


# ------------------------------------------------------------------------------ keys


def test_api_key_create_rejects_unknown_scopes(stack: LiveStack) -> None:
    run = run_cli(["api-key", "create", "--name", "x", "--scopes", "crm:write,root"], stack.settings)
    known = ", ".join(ALL_SCOPES)
    assert (run.code, run.out, run.err) == (2, "", f"error: unknown scope(s) root; known scopes: {known}\n")


def test_api_key_create_makes_a_key_that_authenticates(
    cli: Callable[..., Run], demo: tuple[Run, str], stack: LiveStack
) -> None:
    run = run_cli(["api-key", "create", "--name", "cli-test", "--scopes", "crm:write"], stack.settings)
    assert run.code == 0, run.err
    key = run.out.strip()
    assert key.startswith("nf_") and "\n" not in key  # stdout is the key alone, for scripts
    assert "only its hash is stored" in run.err

    opp_id = opportunity_of(demo[0])
    run = cli("timeline", opp_id, key=key)
    assert run.code == 0, run.err
    assert run.out.startswith(f"opportunity {opp_id}")
    # crm:write only: the key is known, but may not send events.
    run = cli("event", "send", "--type", "nps.response", "--customer", "c", "--set", "score=1", key=key)
    assert (run.code, run.err) == (1, "error: 403 forbidden: this API key lacks the scope 'events:write'\n")
    run = cli("timeline", opp_id, key="nf_not-a-key")
    assert (run.code, run.err) == (1, "error: 401 unauthenticated: unknown or revoked API key\n")


def test_api_key_list_shows_keys_never_the_key_and_revoke_kills_it_at_once(
    cli: Callable[..., Run], demo: tuple[Run, str], stack: LiveStack
) -> None:
    name = f"cli-revoke-{uuid.uuid4().hex[:6]}"
    key = run_cli(["api-key", "create", "--name", name, "--scopes", "crm:write,reports:read"], stack.settings).out
    key = key.strip()
    listed = run_cli(["api-key", "list"], stack.settings)
    assert listed.code == 0 and key not in listed.out
    [row] = [line for line in listed.out.splitlines() if f" {name} " in line]
    key_id = row.split()[0]
    assert row.split()[1:] == [name, "crm:write,reports:read", "-", "active"]
    opp_id = opportunity_of(demo[0])
    assert cli("timeline", opp_id, key=key).code == 0

    run = run_cli(["api-key", "revoke", key_id], stack.settings)
    assert (run.code, run.err) == (0, f"API key {key_id} revoked: it answers 401 from now on.\n")
    run = cli("timeline", opp_id, key=key)
    assert (run.code, run.err) == (1, "error: 401 unauthenticated: unknown or revoked API key\n")
    [row] = [line for line in run_cli(["api-key", "list"], stack.settings).out.splitlines() if f" {name} " in line]
    assert row.split()[4] == "revoked"
    run = run_cli(["api-key", "revoke", "no-such-key"], stack.settings)
    assert (run.code, run.err) == (1, "error: no API key 'no-such-key' (`python starter.py api-key list` shows them)\n")


def test_without_a_key_it_says_where_to_get_one_then_uses_the_dev_key_file(
    stack: LiveStack, keys: dict[str, str], tmp_path: Path
) -> None:
    settings = stack.settings.model_copy(update={"data_dir": tmp_path, "dev_api_key": None})
    run = run_cli(["--api", stack.url, "timeline", "opp_nope"], settings)
    assert run.code == 2 and "no API key" in run.err
    assert str(tmp_path / "dev-api-key") in run.err and "make run" in run.err

    (tmp_path / "dev-api-key").write_text(keys["all"] + "\n")
    run = run_cli(["timeline", "opp_nope"], settings, environ={"NEEDFLOW_API_URL": stack.url})
    # authenticated, then not found
    assert (run.code, run.err) == (1, "error: 404 not_found: no opportunity 'opp_nope'\n")


def test_audit_refresh_judges_the_opportunities_left_stale(demo: tuple[Run, str], stack: LiveStack) -> None:
    """After a migration (or bulk SQL) leaves opportunities stale, `audit refresh` judges
    them in the database; the practice audit's kept verdicts are current again."""
    engine = make_sync_engine(stack.settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            marked = conn.execute(update(Opportunity).values(audit_stale=True)).rowcount
        assert marked >= 1
        run = run_cli(["audit", "refresh"], stack.settings)
        assert run.code == 0, run.err
        assert run.out.splitlines()[-1] == f"{marked} stale opportunities judged by the practice audit"
        assert count(engine, Opportunity, Opportunity.audit_stale) == 0
    finally:
        engine.dispose()
