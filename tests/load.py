"""A load of whole customer journeys driven over the HTTP API, and the check of what the
database recorded: the one implementation of both, for the scale-out test
(tests/test_scale_out.py) and the fault tests (tests/faults/).

Journeys of four kinds (mortgages won by signature, lost by the lender's decline or by
the owner; checking accounts opened) go to the APIs alternately, as a load balancer
would send them; every command carries an Idempotency-Key (events their event id), so a
client may repeat a call that timed out, was cut off or answered a 5xx, and `Journey.call`
does so, against the next API, until its answer comes or the load's `call_deadline`
passes. The longest any call took, retries included, is the load's longest stall.

With `copies`, every event is sent twice at once (to both APIs) and once more at the end
of its journey: one copy answers `applied`, every other `duplicate`. With `out_of_order`,
every other journey first sends an event before its turn (approved before submitted, the
account opened before the customer's consent, an application after the owner closed the
opportunity): refused 409 with nothing recorded, and then, sent again in its turn under
the same id, applied.

`check_recorded` reads the system of record back: for each opportunity exactly one
checkpoint per stage it passed (seq 1..n), each event answered 202 applied exactly once
and none other, one customer, need and opportunity per journey, one consent where the
process records one, one signature request and one link e-mail per signed mortgage.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from domain.ids import event_update_id
from store.db import make_sync_engine
from store.models import (
    Checkpoint,
    Consent,
    Customer,
    Employee,
    EventClaim,
    IdempotencyRecord,
    Need,
    Notification,
    Opportunity,
    ProcessedEvent,
    SignatureRequest,
)
from tests.helpers import SIGNING_LINK, until

#: The stages each kind of journey passes, and how it ends.
PATHS = {
    "mortgage_won": ("won", ["interested", "searching", "applied", "approved", "closed_won"]),
    "mortgage_declined": ("lost", ["interested", "searching", "applied", "closed_lost"]),
    "mortgage_closed_by_owner": ("lost", ["interested", "searching", "closed_lost"]),
    "checking_opened": ("won", ["interested", "authorised", "opened"]),
}
#: The calls each journey makes (without copies or refusals): to time a fault by the
#: share of the load answered.
CALLS = {"mortgage_won": 9, "mortgage_declined": 7, "mortgage_closed_by_owner": 6, "checking_opened": 6}
#: The mix of a load: the scale-out test's 32 journeys, in proportion for larger loads.
MIX = {"mortgage_won": 14, "mortgage_declined": 6, "mortgage_closed_by_owner": 4, "checking_opened": 8}

RUN = uuid.uuid4().hex[:8]


def mix(total: int) -> dict[str, int]:
    """`total` journeys in MIX's proportions (largest remainders)."""
    whole = sum(MIX.values())
    exact = {kind: total * n / whole for kind, n in MIX.items()}
    counts = {kind: int(x) for kind, x in exact.items()}
    for kind in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[kind] += 1
    return counts


def interleaved(counts: dict[str, int]) -> list[str]:
    """The journeys' kinds in an order that spreads each kind over the whole load (always
    the same)."""
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    order = list(range(len(kinds)))
    random.Random(9).shuffle(order)
    return [kinds[i] for i in order]


# ---------------------------------------------------------------------------- the load


@dataclass
class Load:
    """What every journey shares: the HTTP client, the APIs, how patient a client is, and
    the tally."""

    http: httpx.AsyncClient
    urls: list[str]
    key: str
    total_calls: int = 0
    #: Journeys start this far apart, so the load is a stream rather than one burst.
    stagger: float = 0.1
    #: A client gives up on one attempt after this long and repeats it (at the next API).
    attempt_timeout: float = 20.0
    #: A call's deadline over all its attempts: past it, the journey fails.
    call_deadline: float = 70.0
    #: Every event sent twice at once and once more later (the module's docstring).
    copies: bool = False
    #: Every other journey sends an event before its turn first.
    out_of_order: bool = False
    answered: int = 0
    #: (journey, call, attempt, why) of every repeated attempt, and how the call ended.
    retries: list[tuple[str, str, int, str]] = field(default_factory=list)
    #: How the calls ended whose connection was lost mid-request (the process died with the
    #: request in hand, or closed the connection after a 500): `replayed` (Idempotent-Replayed),
    #: `duplicate` (an event already applied), `used link` (a signature already taken: 410),
    #: `answered` (done now).
    cut_off: collections.Counter = field(default_factory=collections.Counter)
    #: The longest a call took to its final answer, retries included, and which.
    slowest: tuple[float, str] = (0.0, "")
    #: Answers a client should never get, though the journey could go on (in words).
    anomalies: list[str] = field(default_factory=list)
    _milestones: list[tuple[float, asyncio.Event]] = field(default_factory=list)

    def repeated(self) -> collections.Counter:
        """Why attempts were repeated: the status answered (409: a keyed retry whose first
        attempt is still in progress) or the exception the client got."""
        return collections.Counter(
            why.split(" ", 1)[0] for _, _, _, why in self.retries if not why.startswith("answered")
        )

    def failed_attempts(self) -> int:
        """How many attempts have failed so far in a way a busy run without a fault does
        not cause: the connection refused, cut or timed out, or a 5xx other than 503 (the
        workflow not answering within the update deadline, which load alone can cause;
        so can 429 and 409): to tell whether a fault touched the load while it lasted."""

        def hurt(why: str) -> bool:
            head = why.split(" ", 1)[0]
            if head.isdigit():
                return int(head) >= 500 and int(head) != 503
            return not why.startswith("answered")

        return sum(1 for _, _, _, why in self.retries if hurt(why))

    def at(self, share: float) -> asyncio.Event:
        """Set once `share` of `total_calls` have been answered: when to do something mid-load."""
        reached = asyncio.Event()
        self._milestones.append((share, reached))
        self._count(0)
        return reached

    def _count(self, answered: int) -> None:
        self.answered += answered
        for share, reached in self._milestones:
            if self.total_calls and self.answered >= share * self.total_calls:
                reached.set()


@dataclass
class Answer:
    response: httpx.Response
    attempts: int

    def json(self) -> Any:
        return self.response.json()


class Journey:
    """One customer's journey through the HTTP API; its calls alternate between the APIs
    and a retry goes to the next one."""

    def __init__(self, load: Load, kind: str, n: int, owner: dict) -> None:
        self.load, self.kind, self.n, self.owner = load, kind, n, owner
        self.name = f"{kind}#{n}"
        self.tag = f"{RUN}-{n}"
        self.email = f"customer{n}.{RUN}@example.com"
        self._next = itertools.count(n)
        self._event_no = itertools.count(1)
        #: The events answered 202, in the order they were applied.
        self.events: list[str] = []
        #: Events refused as out of order (409) before they were sent in their turn.
        self.refused: list[str] = []
        #: Copies to send again at the journey's end (`Load.copies`).
        self._later: list[dict] = []
        self.out_of_order = load.out_of_order and n % 2 == 0
        self.from_store = False
        self.opportunity: dict = {}
        self.seconds = 0.0
        self.finished = False
        #: Got an answer it should not have (`Load.anomalies`).
        self.anomalous = False

    async def call(self, what: str, method: str, path: str, *, ok: tuple[int, ...], **kw: Any) -> Answer:
        headers = {"Authorization": f"Bearer {self.load.key}", **kw.pop("headers", {})}
        loop = asyncio.get_running_loop()
        began = loop.time()
        cut = False
        for attempt in itertools.count(1):
            base = self.load.urls[next(self._next) % len(self.load.urls)]
            why = ""
            try:
                r = await self.load.http.request(
                    method, base + path, headers=headers, timeout=self.load.attempt_timeout, **kw
                )
            except httpx.TimeoutException as exc:
                why = f"timeout ({type(exc).__name__}) at {base}"
            except httpx.TransportError as exc:
                # Refused (the process is down) is no harm; anything else cut the request
                # off after it reached a process, which may have done it.
                cut = cut or not isinstance(exc, httpx.ConnectError)
                why = f"{type(exc).__name__} at {base}"
            else:
                if r.status_code in ok:
                    took = loop.time() - began
                    if took > self.load.slowest[0]:
                        self.load.slowest = (took, f"{self.name} {what}")
                    self.load._count(1)
                    if attempt > 1:
                        how = " (Idempotent-Replayed)" if r.headers.get("Idempotent-Replayed") else ""
                        if path == "/v1/events" and r.status_code == 202:
                            how += f" {r.json()['result']}"
                        answered = f"answered {r.status_code}{how} by {base} after {took:.1f} s"
                        self.load.retries.append((self.name, what, attempt, answered))
                    if cut:
                        self.load.cut_off[_ending(r, path)] += 1
                    return Answer(r, attempt)
                # 5xx (a 503 `timeout`: the workflow has not answered yet) and 429 are no
                # answer: the contract is to repeat the same request.
                retryable = r.status_code >= 500 or r.status_code == 429 or (attempt > 1 and _in_progress(r))
                assert retryable, f"{self.name}: {what} ({method} {path}) -> {r.status_code} {r.text}"
                why = f"{r.status_code} at {base}: {r.text[:160]}"
                if r.status_code == 429:
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 5.0))
            self.load.retries.append((self.name, what, attempt, why))
            assert loop.time() - began < self.load.call_deadline, (
                f"{self.name}: {what} ({method} {path}) not answered within {self.load.call_deadline:g} s; last: {why}"
            )
            # A client backs off: 0.25 s, then longer, at most 2 s between attempts.
            await asyncio.sleep(min(0.25 * attempt, 2.0))
        raise AssertionError("unreachable")

    async def post(self, what: str, path: str, body: dict, *, idem: str | None = None, ok: int = 200) -> Answer:
        headers = {"Idempotency-Key": f"{self.tag}-{idem}"} if idem else {}
        return await self.call(what, "POST", path, json=body, headers=headers, ok=(ok,))

    async def get(self, what: str, path: str) -> dict:
        return (await self.call(what, "GET", path, ok=(200,))).json()

    # ------------------------------------------------------------------ events

    def _event(self, type_: str, data: dict) -> dict:
        """A backend event of this journey's opportunity, with the next event id."""
        return {
            "id": f"evt-{self.tag}-{next(self._event_no)}",
            "type": type_,
            "occurred_at": datetime.now(UTC).isoformat(),
            "opportunity_id": self.opportunity["id"],
            "data": data,
        }

    def _copies(self, body: dict, ok: int) -> list:
        return [self.post(body["type"], "/v1/events", body, ok=ok) for _ in range(2 if self.load.copies else 1)]

    async def send(self, body: dict) -> dict:
        """Send an event (with `copies`: twice at once, and once more at the journey's end)
        and return the opportunity it answers. One copy answers `applied`, any other
        `duplicate`; a retried copy may find the event applied by its own first attempt
        (`duplicate` too), so with retries none may say `applied`, never two."""
        answers = await asyncio.gather(*self._copies(body, 202))
        results = [a.json()["result"] for a in answers]
        retried = any(a.attempts > 1 for a in answers)
        assert set(results) <= {"applied", "duplicate"} and results.count("applied") <= 1, (self.name, results)
        assert retried or results.count("applied") == 1, (self.name, body["type"], results)
        self.events.append(body["id"])
        if self.load.copies:
            self._later.append(body)
        applied = [a for a in answers if a.json()["result"] == "applied"]
        # `duplicate` may be answered from the store, before the workflow finished the step.
        self.from_store = not applied
        return (applied or answers)[0].json()["opportunity"]

    async def event(self, type_: str, data: dict) -> dict:
        return await self.send(self._event(type_, data))

    async def refuse(self, body: dict) -> None:
        """An event out of its turn: every copy refused 409 `invalid_transition`, nothing
        recorded, and its id left free for the same event in its turn."""
        for answer in await asyncio.gather(*self._copies(body, 409)):
            assert answer.json()["error"]["code"] == "invalid_transition", (self.name, answer.json())
        self.refused.append(body["id"])

    async def send_later_copies(self) -> None:
        """The copies kept for later: each one a `duplicate` now, whatever its workflow's state."""
        for body in self._later:
            answer = await self.post(f"{body['type']} (later copy)", "/v1/events", body, ok=202)
            assert answer.json()["result"] == "duplicate", (self.name, answer.json())

    # ------------------------------------------------------------------ the journeys

    async def run(self) -> None:
        began = time.monotonic()
        await asyncio.sleep(self.n * self.load.stagger)
        await self.open()
        await getattr(self, self.kind)()
        await self.send_later_copies()
        self.opportunity = await self.get("read back", f"/v1/opportunities/{self.opportunity['id']}")
        self.seconds = time.monotonic() - began - self.n * self.load.stagger
        self.finished = True

    async def open(self) -> None:
        product = "checking" if self.kind.startswith("checking") else "mortgage"
        customer = (
            await self.post(
                "customer",
                "/v1/customers",
                {"name": f"Customer {self.n}", "email": self.email, "city": "New York", "state": "NY"},
                idem="customer",
                ok=201,
            )
        ).json()
        need = (
            await self.post(
                "need",
                f"/v1/customers/{customer['id']}/needs",
                {"kind": "buy_home", "description": "A first home", "recorded_by": self.owner["id"]},
                idem="need",
                ok=201,
            )
        ).json()
        body = {"customer_id": customer["id"], "product": product, "owner_id": self.owner["id"], "need_id": need["id"]}
        if product == "mortgage":
            body["amount"] = "350000.00"
        self.opportunity = (await self.post("open", "/v1/opportunities", body, idem="open", ok=201)).json()

    async def _searching(self) -> None:
        body = {"actor_id": self.owner["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
        await self.post("advance", f"/v1/opportunities/{self.opportunity['id']}/advance", body, idem="searching")

    async def _application(self, outcome: str, data: dict) -> dict:
        """Submitted, then the lender's `outcome` (approved or declined); out of order, the
        outcome first."""
        submitted = self._event("mortgage.application_submitted", {"application_id": f"APP-{self.tag}"})
        decided = self._event(outcome, data)
        if self.out_of_order:
            await self.refuse(decided)
        await self.send(submitted)
        return await self.send(decided)

    async def mortgage_won(self) -> None:
        await self._searching()
        approved = await self._application("mortgage.application_approved", {"approval_id": f"APR-{self.tag}"})
        if self.from_store:
            # A `duplicate` answered from the store may come before the workflow has sent
            # the documents (their activity may be the one lost with a worker).
            async def sent() -> dict | None:
                opp = await self.get("signature sent?", f"/v1/opportunities/{self.opportunity['id']}")
                return opp if (opp.get("signature") or {}).get("status") == "sent" else None

            approved = await until(sent, f"{self.name}: the documents sent", self.load.call_deadline, interval=0.5)
        assert (approved["stage"], approved["signature"]["status"]) == ("approved", "sent"), (self.name, approved)
        mails = await self.get("outbox", f"/v1/outbox?to={quote(self.email)}&limit=100")
        links = [m for mail in mails["items"] if (m := SIGNING_LINK.search(mail["body"]))]
        assert len(links) == 1, (self.name, mails)
        await self.sign(httpx.URL(links[0].group(0)).path)

    async def sign(self, path: str) -> None:
        """The customer signs. A 410 ("no longer valid") is right only where an earlier
        attempt of ours got no answer and may have used the link (the signature then reads
        completed); at a first attempt it is an anomaly. A 410 while the signature request
        is still `sent` is one too: the customer opens the link again a little later, as
        she would have to, until the load's call deadline."""
        form = {"full_name": f"Customer {self.n}", "agree": "yes"}
        loop = asyncio.get_running_loop()
        began = loop.time()
        refused = 0
        repeated = False  # an attempt of ours that got no answer may have used the link
        while True:
            answer = await self.call("sign", "POST", path, data=form, ok=(200, 410))
            repeated = repeated or answer.attempts > 1
            if answer.response.status_code != 410:
                break
            opp = await self.get("signature after a 410", f"/v1/opportunities/{self.opportunity['id']}")
            status = (opp.get("signature") or {}).get("status")
            if status == "completed":
                if not repeated:
                    self.anomalous = True
                    self.load.anomalies.append(
                        f"{self.name}: POST /sign answered 410 at its first attempt, and the signature reads "
                        "completed: somebody else used the link"
                    )
                break
            assert status == "sent", (self.name, "the signing link answered 410", opp)
            refused += 1
            if refused == 1:
                self.anomalous = True
                self.load.anomalies.append(
                    f"{self.name}: POST /sign answered 410 'This signing link is no longer valid' though its "
                    f"signature request was `sent` (opportunity at {opp['stage']!r} in the store)"
                )
            if loop.time() - began > self.load.call_deadline:
                self.load.anomalies.append(f"{self.name}: its signing link still answered 410 {refused} times later")
                raise AssertionError(f"{self.name}: the signing link stays 410 (refused {refused} times)")
            await asyncio.sleep(2.0)
        if refused:
            self.load.anomalies.append(
                f"{self.name}: the same link was accepted {loop.time() - began:.1f} s later, after {refused} refusals"
            )

    async def mortgage_declined(self) -> None:
        await self._searching()
        await self._application("mortgage.application_declined", {"reason": "income too low"})

    async def mortgage_closed_by_owner(self) -> None:
        await self._searching()
        body = {"actor_id": self.owner["id"], "reason": "bought with another bank"}
        await self.post("close-lost", f"/v1/opportunities/{self.opportunity['id']}/close-lost", body, idem="lost")
        if self.out_of_order:  # too late: the opportunity is closed
            await self.refuse(self._event("mortgage.application_submitted", {"application_id": f"APP-{self.tag}"}))

    async def checking_opened(self) -> None:
        sms = {"phone": "+12125550100", "message_id": f"SM-{self.tag}", "text": "YES"}
        consent = self._event("consent.sms_authorization", {**sms, "received_at": datetime.now(UTC).isoformat()})
        opened = self._event("account.opened", {"account_number": f"CHK-{self.tag}"})
        if self.out_of_order:
            await self.refuse(opened)
        await self.send(consent)
        await self.send(opened)


def _in_progress(r: httpx.Response) -> bool:
    """409 for a retry whose first attempt is still being answered (api/idempotency.py):
    the contract says retry later."""
    if r.status_code != 409:
        return False
    error = r.json().get("error", {})
    return error.get("code") == "conflict" and "idempotency_key" in error.get("details", {})


def _ending(r: httpx.Response, path: str) -> str:
    if r.headers.get("Idempotent-Replayed"):
        return "replayed"
    if path == "/v1/events" and r.status_code == 202:
        return r.json()["result"]
    if r.status_code == 410:
        return "used link"
    return "answered"


async def staff(load: Load) -> dict[str, list[dict]]:
    """Two mortgage brokers and two bankers, created as the load's first calls (not counted)."""
    hiring = Journey(load, "staff", 0, {})
    owners: dict[str, list[dict]] = {"mortgage": [], "checking": []}
    for n in range(2):
        for product, role, lob in (("mortgage", "mortgage_broker", "mortgage"), ("checking", "banker", "retail")):
            body = {
                "name": f"{role.title()} {n}",
                "email": f"{role}{n}.{RUN}@bank.example",
                "role": role,
                "line_of_business": lob,
                "products": [product],
                "capacity": 100,
            }
            answer = await hiring.post("employee", "/v1/employees", body, idem=f"{product}-{n}", ok=201)
            owners[product].append(answer.json())
    load.answered = 0  # the staff is not the load
    return owners


def journeys(load: Load, kinds: list[str], owners: dict[str, list[dict]]) -> list[Journey]:
    """One journey per kind, owned by the staff in turn; `load.total_calls` set to theirs."""
    made = [
        Journey(load, kind, n, owners["checking" if kind.startswith("checking") else "mortgage"][n % 2])
        for n, kind in enumerate(kinds)
    ]
    load.total_calls = sum(CALLS[j.kind] for j in made)
    return made


async def drive(journeys: list[Journey], *, first_failure_stops: bool = True) -> list[str]:
    """Run every journey at once. The first failure cancels the rest and is raised, or
    (`first_failure_stops=False`) every journey runs to its end and the failures are
    returned (`journey: error`), so that a report can say how many finished."""
    if first_failure_stops:
        try:
            async with asyncio.TaskGroup() as running:
                for j in journeys:
                    running.create_task(j.run())
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return []
    done = await asyncio.gather(*(j.run() for j in journeys), return_exceptions=True)
    return [f"{j.name}: {d!r}" for j, d in zip(journeys, done, strict=True) if isinstance(d, BaseException)]


def ended_as_driven(j: Journey) -> bool:
    """The API reads the journey's opportunity back as the journey drove it."""
    status, stages = PATHS[j.kind]
    opp = j.opportunity
    return j.finished and (opp.get("status"), [c["stage"] for c in opp.get("checkpoints", [])]) == (status, stages)


async def workflows_not_completed(client: Client, journeys: list[Journey]) -> list[str]:
    """The journeys whose opportunity workflow has not completed, with its status."""
    unfinished = []
    for j in journeys:
        if not j.opportunity.get("workflow_id"):
            unfinished.append(f"{j.name}: never opened")
            continue
        described = await client.get_workflow_handle(j.opportunity["workflow_id"]).describe()
        if described.status != WorkflowExecutionStatus.COMPLETED:
            unfinished.append(f"{j.name}: {described.status.name if described.status else 'unknown'}")
    return unfinished


async def wait_completed(client: Client, journeys: list[Journey], seconds: float = 60.0) -> list[str]:
    """Wait (up to `seconds`) until every journey's workflow completed; those that did not."""

    async def done() -> bool:
        return not await workflows_not_completed(client, journeys)

    try:
        await until(done, "every opportunity's workflow completed", seconds=seconds, interval=1.0)
    except AssertionError:
        return await workflows_not_completed(client, journeys)
    return []


# ---------------------------------------------------------------------------- the record


@dataclass
class Recorded:
    """What the database holds of a load, against what the load was answered."""

    #: Events answered 202 (each once, however many copies were sent).
    events: int = 0
    #: Answered 202 but not recorded: missing from processed_events or from every checkpoint,
    #: or never applied by its workflow (`check_applied`).
    events_lost: list[str] = field(default_factory=list)
    #: Recorded more than once (in two checkpoints, or applied twice by the workflow).
    events_duplicated: list[str] = field(default_factory=list)
    #: Recorded though never answered 202 (its sender was told it failed, or was refused).
    events_unanswered: list[str] = field(default_factory=list)
    #: Customers, needs, opportunities, consents, signature requests, link e-mails,
    #: employees: each one beyond what the journeys made.
    rows_duplicated: list[str] = field(default_factory=list)
    #: Everything not as it should be, in words (the three lists above included).
    problems: list[str] = field(default_factory=list)
    #: Idempotency-Keys still reserved without an answer (a process died mid-request and
    #: no retry took the key over).
    keys_reserved: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_recorded(database_url: str, journeys: list[Journey]) -> Recorded:
    """The system of record: one checkpoint per stage (seq 1..n), each event answered 202
    applied exactly once and no other recorded, one consent per consent stage, one
    signature request and link e-mail per signature, nothing made twice."""
    engine = make_sync_engine(database_url)
    ids = [j.opportunity["id"] for j in journeys if j.opportunity.get("id")]
    emails = [j.email for j in journeys]
    try:
        with engine.connect() as db:
            checkpoints = collections.defaultdict(list)
            for row in db.execute(
                select(Checkpoint.opportunity_id, Checkpoint.seq, Checkpoint.stage, Checkpoint.evidence)
                .where(Checkpoint.opportunity_id.in_(ids))
                .order_by(Checkpoint.opportunity_id, Checkpoint.seq)
            ):
                checkpoints[row.opportunity_id].append(row)
            rows = {r.id: r for r in db.execute(select(Opportunity).where(Opportunity.id.in_(ids)))}
            processed = collections.Counter(
                r.subject_id for r in db.execute(select(ProcessedEvent).where(ProcessedEvent.subject_id.in_(ids)))
            )
            processed_ids = set(db.scalars(select(ProcessedEvent.id).where(ProcessedEvent.subject_id.in_(ids))))
            claims = set(db.scalars(select(EventClaim.id).where(EventClaim.subject_id.in_(ids))))
            consents = collections.Counter(
                db.scalars(select(Consent.opportunity_id).where(Consent.opportunity_id.in_(ids)))
            )
            signatures = collections.defaultdict(list)
            for r in db.execute(
                select(SignatureRequest.opportunity_id, SignatureRequest.status).where(
                    SignatureRequest.opportunity_id.in_(ids)
                )
            ):
                signatures[r.opportunity_id].append(r.status)
            customers = collections.Counter(db.scalars(select(Customer.email).where(Customer.email.in_(emails))))
            needs = collections.Counter(
                db.scalars(
                    select(Customer.email).join(Need, Need.customer_id == Customer.id).where(Customer.email.in_(emails))
                )
            )
            opportunities = collections.Counter(
                db.scalars(
                    select(Customer.email)
                    .join(Opportunity, Opportunity.customer_id == Customer.id)
                    .where(Customer.email.in_(emails))
                )
            )
            link_mails = collections.Counter(
                db.scalars(select(Notification.to_address).where(Notification.id.like("signature-link-%")))
            )
            employees = collections.Counter(db.scalars(select(Employee.email).where(Employee.email.like(f"%.{RUN}@%"))))
            reserved = db.scalar(
                select(func.count()).select_from(IdempotencyRecord).where(IdempotencyRecord.status_code == 0)
            )
    finally:
        engine.dispose()

    found = Recorded(keys_reserved=reserved or 0)
    sent = [e for j in journeys for e in j.events]
    found.events = len(sent)
    evidence = collections.Counter(
        c.evidence["event_id"] for cps in checkpoints.values() for c in cps if "event_id" in c.evidence
    )
    found.events_lost = sorted({e for e in sent if e not in processed_ids or evidence[e] == 0})
    found.events_duplicated = sorted(e for e, n in evidence.items() if n > 1)
    found.events_unanswered = sorted((processed_ids | set(evidence)) - set(sent))
    if found.events_lost:
        found.problems.append(f"events answered 202 but not recorded: {found.events_lost}")
    if found.events_duplicated:
        found.problems.append(f"events recorded in more than one checkpoint: {found.events_duplicated}")
    if found.events_unanswered:
        found.problems.append(f"events recorded though never answered 202: {found.events_unanswered}")
    if claims != set(sent):
        found.problems.append(f"event claims {sorted(claims ^ set(sent))} differ from the events answered 202")
    refused_recorded = {e for j in journeys for e in j.refused if e not in j.events} & (processed_ids | claims)
    if refused_recorded:
        found.problems.append(f"refused events left a trace: {sorted(refused_recorded)}")

    def made(what: str, counter: collections.Counter, key: str, expected: int, journey: str) -> None:
        if counter[key] > expected:
            found.rows_duplicated.append(f"{journey}: {counter[key]} {what}")
        if counter[key] != expected:
            found.problems.append(f"{journey}: {counter[key]} {what}, expected {expected}")

    for email in employees:
        made("employees", employees, email, 1, email)
    for j in journeys:
        if not j.opportunity.get("id"):
            found.problems.append(f"{j.name}: never opened")
            continue
        opp_id = j.opportunity["id"]
        status, stages = PATHS[j.kind]
        made("customers", customers, j.email, 1, j.name)
        made("needs", needs, j.email, 1, j.name)
        made("opportunities", opportunities, j.email, 1, j.name)
        made("consents", consents, opp_id, 1 if status == "won" else 0, j.name)
        signed = j.kind == "mortgage_won"
        made("signature-link e-mails", link_mails, j.email, 1 if signed else 0, j.name)
        if len(signatures[opp_id]) > (1 if signed else 0):
            found.rows_duplicated.append(f"{j.name}: {len(signatures[opp_id])} signature requests")
        if signatures[opp_id] != (["completed"] if signed else []):
            found.problems.append(f"{j.name}: signature requests {signatures[opp_id]}")
        cps = checkpoints[opp_id]
        if [(c.seq, c.stage) for c in cps] != list(enumerate(stages, start=1)):
            found.problems.append(f"{j.name}: checkpoints {[(c.seq, c.stage) for c in cps]}, expected {stages}")
        row = rows.get(opp_id)
        if row is None or (row.status, row.stage, row.last_seq) != (status, stages[-1], len(stages)):
            shown = row and (row.status, row.stage, row.last_seq)
            found.problems.append(f"{j.name}: opportunity {shown}, expected {(status, stages[-1], len(stages))}")
        # Each event in exactly one checkpoint's evidence, the journey's own, in order.
        in_order = [c.evidence["event_id"] for c in cps if "event_id" in c.evidence]
        if in_order != j.events:
            found.problems.append(f"{j.name}: checkpoints carry events {in_order}, answered 202: {j.events}")
        if processed[opp_id] != len(j.events):
            found.problems.append(f"{j.name}: {processed[opp_id]} processed events, {len(j.events)} answered 202")
    return found


async def check_applied(client: Client, journeys: list[Journey], recorded: Recorded) -> None:
    """The workflows' side of `check_recorded`: every event answered 202 was applied by its
    opportunity's workflow exactly once (the update keyed by its id accepted once in the
    history), and no refused one was. An event in the store that its workflow never took
    is lost too: the opportunity's state and its record have parted."""
    for j in journeys:
        if not j.opportunity.get("workflow_id"):
            continue
        history = await client.get_workflow_handle(j.opportunity["workflow_id"]).fetch_history()
        accepted = collections.Counter(
            e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        )
        for event_id in [*j.events, *(e for e in j.refused if e not in j.events)]:
            expected = 1 if event_id in j.events else 0
            found = accepted[event_update_id(event_id)]
            if found == expected:
                continue
            if found < expected:
                recorded.events_lost.append(event_id)
                recorded.problems.append(f"{j.name}: event {event_id} answered 202, never applied by its workflow")
            else:
                recorded.events_duplicated.append(event_id)
                recorded.problems.append(f"{j.name}: event {event_id} applied {found} times by its workflow")


def assert_recorded_once(database_url: str, journeys: list[Journey]) -> Recorded:
    recorded = check_recorded(database_url, journeys)
    assert recorded.ok, "the record is not what the load was answered:\n  " + "\n  ".join(recorded.problems[:20])
    return recorded
