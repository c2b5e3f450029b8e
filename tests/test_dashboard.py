"""The managers' dashboard (api/routers/dashboard.py): its sign-in and session over HTTP,
then the page itself in Debian's headless Chromium on seeded data.

The seeded team (a territory of its own: a manager, two employees) has opportunities in
several stages, referrals made and converted, and one won mortgage without consent (the
audit's `consent_missing`). Chromium is driven through the Chrome DevTools Protocol over
a WebSocket (`websockets`, which uvicorn[standard] already brings): it signs in through
the page's own form, so the session cookie is the one the server set. The test reads the
numbers each drawn chart holds (`data-values`, written by static/dashboard.js from the
Chart.js instances) and keeps a full-page screenshot in var/artifacts/dashboard.png; then
it follows the audit exception's link to the opportunity's page (dashboard-opportunity.png).

Without a `chromium` on PATH the browser test is skipped, except under CI (the variable
`CI` set), where it fails: .ci/run installs Debian's chromium.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session
from temporalio.testing import WorkflowEnvironment
from websockets.sync.client import ClientConnection, connect

from api.routers.dashboard import COOKIE, SECURITY_HEADERS
from config import Settings
from store.keys import hash_key, register_api_key
from store.models import ApiKey, Employee
from tests.helpers import LiveApi, territory, unique
from tests.store_rows import insert_opportunity, insert_referral

ARTIFACT = Path(__file__).resolve().parents[1] / "var" / "artifacts" / "dashboard.png"
OPPORTUNITY_ARTIFACT = ARTIFACT.with_name("dashboard-opportunity.png")

MORTGAGE = [
    ("interested", {}),
    ("searching", {"realtor": "Jane Realty"}),
    ("applied", {"application_id": "APP-1"}),
    ("approved", {"approval_id": "APR-1"}),
    ("closed_won", {"envelope_id": "env-1", "document_sha256": "ab" * 32}),
]
CHECKING = [
    ("interested", {}),
    ("authorised", {"phone": "+12125550100", "message_id": "SM1", "text": "YES"}),
    ("opened", {"account_number": "0001234"}),
]


# ---------------------------------------------------------------- the seeded team


@dataclass
class Team:
    manager_id: str
    manager_name: str
    alice: str
    bob: str
    key: str
    period: str
    unconsented: str  # the won mortgage without consent
    unconsented_detail: str  # the audit's sentence about it


def _first_instant(now: datetime) -> datetime:
    """When the seeded history starts: ten minutes ago, inside the current UTC month."""
    t0 = now - timedelta(minutes=10)
    return t0 if t0.month == now.month else now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def team(db: Engine) -> Team:
    """Kevin's team: Alice (3 open mortgages, 3 referrals made, 2 converted) and Bob (a
    checking account won, a mortgage won without consent, one lost; 1 referral, closed)."""
    now = datetime.now(UTC)
    t0 = _first_instant(now)
    state = territory()
    kevin, alice, bob = unique("emp_kevin"), unique("emp_alice"), unique("emp_bob")
    with Session(db) as session, session.begin():
        session.add(
            Employee(
                id=kevin,
                name=f"Kevin {state}",
                email="kevin@bank.test",
                role="manager",
                line_of_business="retail",
                states=[state],
                capacity=10,
            )
        )
        session.flush()
        for emp, name, lob in ((alice, "Alice", "retail"), (bob, "Bob", "mortgage")):
            session.add(
                Employee(
                    id=emp,
                    name=f"{name} {state}",
                    email=f"{name.lower()}@bank.test",
                    role="banker",
                    line_of_business=lob,
                    states=[state],
                    capacity=10,
                    manager_id=kevin,
                )
            )
    # Checkpoints a minute apart from t0, each need a minute before it and, but for the
    # unconsented mortgage, the customer's consent at t0.
    plant = partial(insert_opportunity, db, opened_at=t0, step=timedelta(minutes=1))
    consented = ((t0, None),)
    for _ in range(2):
        plant(MORTGAGE[:1], owner_id=alice, consents=consented)
    plant(MORTGAGE[:3], owner_id=alice, consents=consented)
    plant(CHECKING, owner_id=bob, product="checking", consents=consented)
    unconsented = plant(MORTGAGE, owner_id=bob, amount="250000")["id"]
    plant([*MORTGAGE[:1], ("closed_lost", {})], owner_id=bob, consents=consented)
    for status in ("converted", "converted", "assigned"):
        decided = t0 + timedelta(minutes=5) if status == "converted" else None
        insert_referral(
            db,
            referrer_id=alice,
            created_at=t0,
            referrer_lob="retail",
            assignee_id=bob,
            status=status,
            decided_at=decided,
        )
    insert_referral(
        db,
        referrer_id=bob,
        created_at=t0,
        referrer_lob="mortgage",
        assignee_id=alice,
        status="closed",
        decided_at=t0 + timedelta(minutes=5),
    )
    key = register_api_key(db, unique("kevin-dashboard"), ["reports:read"], employee_id=kevin)
    won = t0 + timedelta(minutes=len(MORTGAGE) - 1)  # its last checkpoint
    detail = f"Won on {won:%Y-%m-%d %H:%M} UTC without any consent of the customer to mortgage."
    return Team(kevin, f"Kevin {state}", alice, bob, key, f"{t0:%Y-%m}", unconsented, detail)


# ---------------------------------------------------------------- sign-in over HTTP


@pytest.fixture
def http(app_client: httpx.AsyncClient) -> Iterator[httpx.AsyncClient]:
    """The session's ASGI client, its cookie jar emptied after the test: the session
    cookies set here must not follow the other tests' requests."""
    app_client.cookies.clear()
    yield app_client
    app_client.cookies.clear()


def _set_cookie_header(r: httpx.Response) -> str:
    [header] = [v for k, v in r.headers.multi_items() if k.lower() == "set-cookie"]
    return header


async def test_sign_in_sets_an_httponly_session_cookie_never_the_key(http: httpx.AsyncClient, team: Team) -> None:
    page = await http.get("/dashboard")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]

    r = await http.post("/dashboard/sign-in", data={"api_key": team.key})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = _set_cookie_header(r)
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain http here; https gets Secure
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert team.key not in cookie and hash_key(team.key) not in cookie and len(session_id) >= 40

    jar = {"Cookie": f"{COOKIE}={session_id}"}
    page = await http.get("/dashboard", headers=jar)
    assert page.status_code == 200 and team.manager_name in page.text and 'id="dashboard-data"' in page.text
    assert team.key not in page.text
    # Signing out ends the session server-side: the old cookie no longer opens the page.
    out = await http.post("/dashboard/sign-out", headers=jar)
    assert out.status_code == 303 and f"{COOKIE}=" in _set_cookie_header(out)
    again = await http.get("/dashboard", headers=jar)
    assert 'name="api_key"' in again.text and "dashboard-data" not in again.text


async def test_sign_in_refuses_keys_without_reports_read(http: httpx.AsyncClient, db: Engine) -> None:
    unknown = await http.post("/dashboard/sign-in", data={"api_key": "nf_not_a_key"})
    assert unknown.status_code == 401 and "set-cookie" not in unknown.headers
    writer = register_api_key(db, unique("crm-only"), ["crm:write"])
    refused = await http.post("/dashboard/sign-in", data={"api_key": writer})
    assert refused.status_code == 403 and "reports:read" in refused.text and "set-cookie" not in refused.headers
    # The key is never accepted in the URL either.
    assert "dashboard-data" not in (await http.get("/dashboard", params={"api_key": writer})).text


async def test_a_revoked_key_ends_the_session_on_the_next_request(
    http: httpx.AsyncClient, db: Engine, team: Team
) -> None:
    key = register_api_key(db, unique("to-revoke"), ["reports:read"])
    r = await http.post("/dashboard/sign-in", data={"api_key": key})
    jar = {"Cookie": _set_cookie_header(r).split(";")[0]}
    page = await http.get("/dashboard", params={"manager_id": team.manager_id}, headers=jar)
    assert "dashboard-data" in page.text
    with db.begin() as conn:
        conn.execute(update(ApiKey).where(ApiKey.key_sha256 == hash_key(key)).values(revoked_at=datetime.now(UTC)))
    page = await http.get("/dashboard", params={"manager_id": team.manager_id}, headers=jar)
    assert 'name="api_key"' in page.text and "dashboard-data" not in page.text


async def test_a_key_not_bound_to_a_manager_gets_a_picker(http: httpx.AsyncClient, db: Engine, team: Team) -> None:
    key = register_api_key(db, unique("reporting"), ["reports:read"])
    r = await http.post("/dashboard/sign-in", data={"api_key": key})
    jar = {"Cookie": _set_cookie_header(r).split(";")[0]}
    page = await http.get("/dashboard", headers=jar)
    assert page.status_code == 200 and f'value="{team.manager_id}"' in page.text and "dashboard-data" not in page.text
    bad = await http.get("/dashboard", params={"period": "2026-13"}, headers=jar)
    assert "not a real month" in bad.text
    unknown = await http.get("/dashboard", params={"manager_id": "emp_nobody"}, headers=jar)
    assert unknown.status_code == 404


#: Kevin's three questions on an opportunity's page: (question, "yes" / "no").
QUESTIONS = r'data-question="(\w+)" data-answer="(\w+)"'


async def test_an_exception_links_to_its_opportunity_under_the_session(
    http: httpx.AsyncClient, db: Engine, team: Team
) -> None:
    r = await http.post("/dashboard/sign-in", data={"api_key": team.key})
    jar = {"Cookie": _set_cookie_header(r).split(";")[0]}
    page = await http.get("/dashboard", params={"period": team.period}, headers=jar)
    [href] = re.findall(r'href="(/dashboard/opportunities/[^"]*)"', page.text)
    assert href == f"/dashboard/opportunities/{team.unconsented}"

    # Followed with the session cookie: the opportunity and its review, on the dashboard's terms.
    opp = await http.get(href, headers=jar)
    assert opp.status_code == 200 and opp.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert opp.headers[name] == value
    assert "<script" not in opp.text
    assert '<tr data-rule="consent_missing"><td><code>consent_missing</code></td>' in opp.text
    assert f'<td class="detail">{team.unconsented_detail}</td>' in opp.text
    answers = dict(re.findall(QUESTIONS, opp.text))
    assert answers == {"consent": "no", "need_before_sale": "yes", "all_checkpoints": "yes"}
    assert re.findall(r'<tr data-seq="\d+" data-stage="(\w+)">', opp.text) == [s for s, _ in MORTGAGE]
    assert team.bob in opp.text and "250000.00" in opp.text and "<code>envelope_id</code>" in opp.text
    assert "env-1" not in opp.text  # evidence: its keys only
    assert "Planted Customer" not in opp.text  # the customer by id only, as the dashboard shows none
    assert f'href="/dashboard?manager_id={team.manager_id}&amp;period={team.period}"' in opp.text

    # Evidence values stay off the page (an SMS's phone number is the customer's); every
    # stored text is escaped.
    stranger = unique("emp_stranger")
    with Session(db) as session, session.begin():
        session.add(
            Employee(
                id=stranger,
                name="<i>Stranger</i>",
                email="stranger@bank.test",
                role="banker",
                line_of_business="retail",
                states=[territory()],
                capacity=1,
            )
        )
    sms = {"phone": "+12125550199", "message_id": "SM9", "text": "YES", "<b>note</b>": "x"}
    checking = insert_opportunity(
        db,
        [("interested", {}), ("authorised", sms)],
        owner_id=stranger,
        opened_at=datetime.now(UTC),
        product="checking",
    )
    page = await http.get(f"/dashboard/opportunities/{checking['id']}", headers=jar)
    assert page.status_code == 200 and "<code>phone</code>" in page.text and "+12125550199" not in page.text
    assert "<b>" not in page.text and "&lt;b&gt;note&lt;/b&gt;" in page.text
    assert "<i>" not in page.text and "&lt;i&gt;Stranger&lt;/i&gt;" in page.text
    assert dict(re.findall(QUESTIONS, page.text))["consent"] == "no"  # open, and no consent of hers yet

    unknown = await http.get("/dashboard/opportunities/opp_nowhere", headers=jar)
    assert unknown.status_code == 404 and "No opportunity with id opp_nowhere." in unknown.text
    assert unknown.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]

    # Without the cookie, or once signed out: to the sign-in, and nothing of the opportunity.
    http.cookies.clear()
    for headers in ({}, {"Cookie": f"{COOKIE}=not-a-session"}):
        away = await http.get(href, headers=headers)
        assert away.status_code == 303 and away.headers["location"] == "/dashboard"
        assert team.unconsented_detail not in away.text
    await http.post("/dashboard/sign-out", headers=jar)
    gone = await http.get(href, headers=jar)
    assert gone.status_code == 303 and gone.headers["location"] == "/dashboard"
    sign_in = await http.get(gone.headers["location"], headers=jar)
    assert 'name="api_key"' in sign_in.text


# ---------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def live_api(temporal_env: WorkflowEnvironment, settings: Settings) -> Iterator[LiveApi]:
    client = temporal_env.client
    live = LiveApi(settings, client.service_client.config.target_host, client.namespace)
    live.start()
    try:
        yield live
    finally:
        live.stop()


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the dashboard's browser test")
        pytest.skip(reason)
    return found


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                assert "error" not in message, (method, message["error"])
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)


@pytest.fixture
def browser() -> Iterator[DevTools]:
    """Headless Chromium with a throwaway profile, and a CDP connection to its page."""
    executable = chromium_path()
    profile = tempfile.mkdtemp(prefix="needflow-chromium-")
    args = [
        executable,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root (CI containers)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        [page] = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tools = DevTools(ws)
            tools.call("Page.enable")
            tools.call("Runtime.enable")
            tools.call("Log.enable")
            yield tools
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


#: What the test reads off the drawn page.
READ_PAGE = """JSON.stringify({
  title: document.querySelector("h1").textContent,
  canvases: Array.from(document.querySelectorAll("canvas")).map(c => ({
    id: c.id, width: c.width, height: c.height, values: JSON.parse(c.dataset.values || "null")})),
  funnelRows: Object.fromEntries(Array.from(document.querySelectorAll("#funnel-table tr[data-stage]"))
    .map(tr => [tr.dataset.stage, Number(tr.dataset.count)])),
  scorecards: Array.from(document.querySelectorAll("#scorecards-table tr[data-employee-id]")).map(tr => ({
    id: tr.dataset.employeeId, units: Number(tr.dataset.units), amount: tr.dataset.amount})),
  exceptions: Array.from(document.querySelectorAll("#exceptions-table tr[data-opportunity-id]")).map(tr => ({
    id: tr.dataset.opportunityId, rule: tr.dataset.rule, href: tr.querySelector("a").getAttribute("href")})),
  cookie: document.cookie,
  period: document.querySelector("input[name=period]").value,
  location: location.href,
})"""


#: What the test reads off an opportunity's page.
READ_OPPORTUNITY = """JSON.stringify({
  id: document.querySelector("#opportunity").dataset.opportunityId,
  findings: Array.from(document.querySelectorAll("#findings-table tr[data-rule]")).map(tr => ({
    rule: tr.dataset.rule, detail: tr.querySelector("td.detail").textContent})),
  answers: Object.fromEntries(Array.from(document.querySelectorAll("#review-table tr[data-question]"))
    .map(tr => [tr.dataset.question, tr.dataset.answer])),
  stages: Array.from(document.querySelectorAll("#checkpoints-table tr[data-stage]")).map(tr => tr.dataset.stage),
  cookie: document.cookie,
  location: location.href,
})"""


def page_problems(browser: DevTools) -> list[dict[str, Any]]:
    """Script errors and what the CSP refused, so far."""
    return [
        e["params"]
        for e in browser.events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]


def screenshot(browser: DevTools, path: Path) -> None:
    """The whole page, kept in `path`."""
    height = browser.evaluate("document.documentElement.scrollHeight")
    shot = browser.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1400, "height": height, "scale": 1},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_the_dashboard_draws_the_seeded_numbers_in_chromium(
    browser: DevTools, live_api: LiveApi, team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    browser.call("Page.navigate", url=f"{live_api.url}/dashboard")
    browser.wait_for("document.readyState === 'complete' && !!document.querySelector('input[name=api_key]')", "sign-in")
    # Sign in through the page's own form, as a manager would: the cookie is the server's.
    browser.evaluate(
        f"document.querySelector('input[name=api_key]').value = {json.dumps(team.key)};"
        "document.querySelector('form').submit(); true"
    )
    browser.wait_for("document.body && document.body.dataset.charts === 'ready'", "the charts")
    page = json.loads(browser.evaluate(READ_PAGE))

    assert page["title"] == f"{team.manager_name}'s team"  # the key's own manager, by default
    assert "api_key" not in page["location"] and team.key not in page["location"]
    assert page["cookie"] == "", "the session cookie must be HttpOnly (invisible to scripts)"
    assert page["period"] == team.period

    charts = {c["id"]: c for c in page["canvases"]}
    assert set(charts) == {"funnel-chart", "referrers-chart", "scorecards-chart"}
    assert all(c["width"] > 0 and c["height"] > 0 for c in charts.values())
    funnel = {"interested": 2, "applied": 1, "opened": 1, "closed_won": 1, "closed_lost": 1}
    assert charts["funnel-chart"]["values"] == funnel
    assert page["funnelRows"] == funnel  # in funnel order: open stages, the won ones, lost
    assert list(page["funnelRows"]) == ["interested", "applied", "closed_won", "opened", "closed_lost"]

    # Alice: 3 referrals, 2 decided and converted; Bob: 1, decided and not converted.
    assert charts["referrers-chart"]["values"] == {"referrals": [3, 1], "decided": [2, 1], "converted": [2, 0]}
    # Scorecards of the month, by name: Bob won the checking account and the mortgage.
    assert charts["scorecards-chart"]["values"] == {
        "units": [0, 2],
        "referrals made": [3, 1],
        "referrals converted": [2, 0],
        "cross-LOB referrals": [3, 1],
    }
    assert [(s["id"], s["units"], s["amount"]) for s in page["scorecards"]] == [
        (team.alice, 0, "0.00"),
        (team.bob, 2, "250000.00"),
    ]
    assert page["exceptions"] == [
        {"id": team.unconsented, "rule": "consent_missing", "href": f"/dashboard/opportunities/{team.unconsented}"}
    ]

    # Nothing refused by the CSP, no script error.
    problems = page_problems(browser)
    assert not problems, problems
    screenshot(browser, ARTIFACT)

    # The exception's link, clicked as a manager would: the opportunity's page, under the
    # same session cookie (the API's own page would answer 401 without a Bearer key).
    browser.evaluate("document.querySelector('#exceptions-table a').click(); true")
    browser.wait_for(
        "location.pathname.startsWith('/dashboard/opportunities/') && document.readyState === 'complete'"
        " && !!document.querySelector('#findings-table')",
        "the opportunity's page",
    )
    opp = json.loads(browser.evaluate(READ_OPPORTUNITY))
    assert opp["id"] == team.unconsented and opp["location"] == f"{live_api.url}{page['exceptions'][0]['href']}"
    assert opp["findings"] == [{"rule": "consent_missing", "detail": team.unconsented_detail}]
    assert opp["answers"] == {"consent": "no", "need_before_sale": "yes", "all_checkpoints": "yes"}
    assert opp["stages"] == [s for s, _ in MORTGAGE] and opp["cookie"] == ""
    problems = page_problems(browser)
    assert not problems, problems
    screenshot(browser, OPPORTUNITY_ARTIFACT)
    with capsys.disabled():
        print(
            f"\ndashboard screenshots: {ARTIFACT}, {OPPORTUNITY_ARTIFACT} "
            f"({time.monotonic() - started:.1f}s in Chromium)"
        )
