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
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import starter
from api.app import create_app
from config import Settings
from worker import build_worker

MORTGAGE_STAGES = ["interested", "searching", "applied", "approved", "closed_won"]


class LiveStack:
    """API (uvicorn on a free port) and worker, served from a thread until stop()."""

    def __init__(self, settings: Settings, temporal_address: str, namespace: str):
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
        client = await Client.connect(
            self.temporal_address, namespace=self.namespace, data_converter=pydantic_data_converter
        )
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


def opportunity_of(run: Run) -> str:
    last = run.out.strip().splitlines()[-1]
    assert last.startswith("done: mortgage opportunity "), last
    return last.split()[3]


# ------------------------------------------------------------------------------ demo


def test_demo_plays_rachels_journey_to_closed_won(demo: tuple[Run, str]) -> None:
    run, _ = demo
    assert run.code == 0, run.err
    assert run.err == ""
    opp_id = opportunity_of(run)
    last = run.out.splitlines()[-1]
    assert "is closed_won" in last and 'search Stage="closed_won"' in last and "http://127.0.0.1:" in last

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
    table = out[out.index(f"  mortgage {opp_id}"):out.index("\n  consents")].splitlines()
    assert [line.split()[0] for line in table[2:]] == MORTGAGE_STAGES
    consents = [line.split() for line in out[out.index("\n  consents\n"):].splitlines()[3:-1]]
    assert [c[:2] for c in consents] == [["sms", "checking"], ["esignature", "mortgage"]]
    assert 'signer_name="Rachel Adams",' in out.splitlines()[-2]


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


# ------------------------------------------------------------------------------ timeline


def test_timeline_shows_the_checkpoints_and_signature(cli, demo: tuple[Run, str]) -> None:
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


def test_timeline_of_an_unknown_opportunity_is_a_404(cli) -> None:
    run = cli("timeline", "opp_nope")
    assert run.code == 1 and run.out == ""
    assert "404 not_found" in run.err and "opp_nope" in run.err


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
        need = http.post(f"/v1/customers/{cus['id']}/needs",
                         json={"kind": "buy_home", "description": "A flat", "recorded_by": emp["id"]}).json()
        opp = http.post("/v1/opportunities", json={"customer_id": cus["id"], "product": "mortgage",
                                                   "owner_id": emp["id"], "need_id": need["id"],
                                                   "amount": "250000.00"})  # fmt: skip
        assert opp.status_code == 201, opp.text
        r = http.post(f"/v1/opportunities/{opp.json()['id']}/advance",
                      json={"actor_id": emp["id"], "to_stage": "searching", "evidence": {"realtor": "R"}})
        assert r.status_code == 200, r.text
        return r.json()


def test_event_send_applies_once_then_answers_duplicate(cli, stack: LiveStack, keys: dict[str, str]) -> None:
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


def test_event_send_prints_the_apis_refusal_and_exits_1(cli, stack: LiveStack, keys: dict[str, str]) -> None:
    opp = searching_mortgage(stack, keys["all"])
    submitted = ("event", "send", "--type", "mortgage.application_submitted", "--opportunity", opp["id"])

    run = cli("event", "send", "--type", "mortgage.application_approved", "--opportunity", opp["id"],
              "--set", "approval_id=APR-1")  # fmt: skip
    assert (run.code, run.out) == (1, "")
    assert "409 invalid_transition" in run.err and "not the next stage" in run.err

    run = cli(*submitted)
    assert run.code == 1 and "422 validation_error" in run.err and "application_id" in run.err

    run = cli(*submitted, "--set", "application_id=A", key=keys["crm:write"])
    assert run.code == 1 and "403 forbidden" in run.err

    run = cli(*submitted, "--data", "[1]")
    assert run.code == 2 and "JSON object" in run.err

    with stack.http(keys["all"]) as http:  # and nothing changed
        assert http.get(f"/v1/opportunities/{opp['id']}").json()["stage"] == "searching"


# ------------------------------------------------------------------------------ keys


def test_api_key_create_rejects_unknown_scopes(stack: LiveStack) -> None:
    run = run_cli(["api-key", "create", "--name", "x", "--scopes", "crm:write,root"], stack.settings)
    assert run.code == 2 and run.out == ""
    assert "unknown scope(s) root" in run.err and "crm:write" in run.err


def test_api_key_create_makes_a_key_that_authenticates(cli, demo: tuple[Run, str], stack: LiveStack) -> None:
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
    assert run.code == 1 and "403 forbidden" in run.err
    run = cli("timeline", opp_id, key="nf_not-a-key")
    assert run.code == 1 and "401 unauthenticated" in run.err


def test_without_a_key_it_says_where_to_get_one_then_uses_the_dev_key_file(
    stack: LiveStack, keys: dict[str, str], tmp_path: Path
) -> None:
    settings = stack.settings.model_copy(update={"data_dir": tmp_path, "dev_api_key": None})
    run = run_cli(["--api", stack.url, "timeline", "opp_nope"], settings)
    assert run.code == 2 and "no API key" in run.err
    assert str(tmp_path / "dev-api-key") in run.err and "make run" in run.err

    (tmp_path / "dev-api-key").write_text(keys["all"] + "\n")
    run = run_cli(["timeline", "opp_nope"], settings, environ={"NEEDFLOW_API_URL": stack.url})
    assert run.code == 1 and "404 not_found" in run.err  # authenticated, then not found
