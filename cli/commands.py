"""What each command does, as functions of an HTTP client and an `Out`: send an event,
show an opportunity's timeline or a referral, create an API key; and where the API and
its key come from (flag, environment, settings, the dev stack's key file). Kept apart
from argv parsing (`cli.main`) so tests and scripts can call a command directly."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import httpx
from sqlalchemy import Engine

from cli import CliError, Json, Out
from cli.http import get, now, post
from cli.render import (
    checkpoint_table,
    factors_text,
    history_table,
    prospect_text,
    signature_line,
    stage_text,
    table,
    when,
)
from config import Settings


def parse_event_data(data_json: str | None, assignments: Sequence[str] | None) -> Json:
    """`--data '{"a": 1}'` (typed JSON) or `--set a=1 --set b=x` (string values)."""
    if data_json is not None:
        try:
            data = json.loads(data_json)
        except json.JSONDecodeError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CliError('--data must be a JSON object, e.g. \'{"application_id": "APP-9"}\'')
        return data
    data = {}
    for item in assignments or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set expects key=value, got {item!r}")
        data[name.strip()] = value
    return data


def send_event(
    http: httpx.Client,
    out: Out,
    *,
    type_: str,
    opportunity_id: str | None = None,
    customer_id: str | None = None,
    event_id: str | None = None,
    data: Json | None = None,
    occurred_at: str | None = None,
) -> Json:
    """POST /v1/events; prints `applied`/`duplicate` and where the subject now stands."""
    if (opportunity_id is None) == (customer_id is None):
        raise CliError("an event names exactly one subject: an opportunity or a customer")
    body: Json = {"id": event_id or f"evt-{secrets.token_hex(8)}", "type": type_,
                  "occurred_at": occurred_at or now(), "data": data or {}}  # fmt: skip
    if opportunity_id is not None:
        body["opportunity_id"] = opportunity_id
    else:
        body["customer_id"] = customer_id
    answer = post(http, "/v1/events", body, expect=202)
    opp = answer.get("opportunity")
    where = (
        f"opportunity {opp['id']} is in stage {stage_text(opp)}"
        if opp
        else f"recorded for customer {answer.get('customer_id') or customer_id}"
    )
    out(f"{answer['result']}: event {answer['id']} ({type_}); {where}")
    return answer


def show_timeline(http: httpx.Client, out: Out, opportunity_id: str) -> Json:
    """GET /v1/opportunities/{id}, printed for a person."""
    opp = get(http, f"/v1/opportunities/{opportunity_id}")
    head = f"opportunity {opp['id']} · {opp['product']} (process v{opp['process_version']})"
    head += f" · customer {opp['customer_id']} · owner {opp['owner_id']}"
    if opp.get("amount"):
        head += f" · amount {opp['amount']}"
    out(head)
    status = f"stage {opp['stage']} ({opp['probability']}%) · status {opp['status']}"
    if opp.get("lost_reason"):
        status += f" ({opp['lost_reason']})"
    out(f"{status} · workflow {opp['workflow_id']}")
    for line in checkpoint_table(opp["checkpoints"]):
        out(line)
    sig = signature_line(opp.get("signature"))
    if sig:
        out(sig)
    return opp


def show_referral(http: httpx.Client, out: Out, referral_id: str) -> Json:
    """GET /v1/referrals/{id}, printed for a person."""
    ref = get(http, f"/v1/referrals/{referral_id}")
    head = f"referral {ref['id']} · {ref['expressed_interest']}"
    if ref.get("value"):
        head += f" · value {ref['value']}"
    head += f" · referred by {ref['referrer']['type']} {ref['referrer']['id']}"
    head += f" · created {when(ref['created_at'])}"
    out(head)
    whom = [prospect_text(ref["prospect"])] if ref.get("prospect") else []
    if ref.get("customer_id"):
        whom.append(f"customer {ref['customer_id']}")
    out(f"for {' · '.join(whom) or '-'}")
    if ref.get("notes"):
        out(f"notes: {ref['notes']}")
    status = f"status {ref['status']}"
    if ref.get("close_reason"):
        status += f" ({ref['close_reason']})"
    status += f" · assignee {ref.get('assignee_id') or '-'}"
    if ref.get("queue"):
        status += f" · queue {ref['queue']}"
    if ref.get("sla_deadline"):
        status += f" · SLA {when(ref['sla_deadline'])}"
    if ref.get("opportunity_id"):
        status += f" · opportunity {ref['opportunity_id']}"
    out(f"{status} · workflow {ref['workflow_id']}")
    scores = f"referrer score {ref['referrer_score']}/100 · priority {ref['priority']:.2f}"
    out(f"lead score {ref['lead_score']}/99 ({factors_text(ref)}) · {scores}")
    for line in history_table(ref["history"]):
        out(line)
    return ref


def create_api_key(database_url: str, name: str, scopes: Sequence[str], employee_id: str | None = None) -> str:
    """Register a new key straight in the database; returns it (only its hash is kept)."""
    from store.keys import ALL_SCOPES, register_api_key

    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        problem = f"unknown scope(s) {', '.join(unknown)}" if unknown else "give at least one scope"
        raise CliError(f"{problem}; known scopes: {', '.join(ALL_SCOPES)}")
    with _key_store(database_url) as engine:
        try:
            return register_api_key(engine, name, list(scopes), employee_id=employee_id)
        except ValueError as exc:  # an unknown employee
            raise CliError(str(exc)) from None


def list_api_keys(database_url: str, out: Out) -> None:
    """Every key's id, name, scopes, employee and state (never the key itself)."""
    from store.keys import list_api_keys as listed

    with _key_store(database_url) as engine:
        rows = listed(engine)
    rows_out = [
        [
            r.id,
            r.name,
            ",".join(r.scopes),
            r.employee_id or "-",
            f"revoked {when(r.revoked_at.isoformat())}" if r.revoked_at else "active",
        ]
        for r in rows
    ]
    for line in table(["id", "name", "scopes", "employee", "state"], rows_out):
        out(line)


def revoke_api_key(database_url: str, key_id: str) -> None:
    """Revoke a key: it answers 401 from its next request on."""
    from store.keys import revoke_api_key as revoke

    with _key_store(database_url) as engine:
        if not revoke(engine, key_id):
            raise CliError(f"no API key {key_id!r} (`python starter.py api-key list` shows them)", exit_code=1)


def refresh_audit(settings: Settings, out: Out) -> int:
    """Judge every opportunity the practice audit's kept verdicts are stale for
    (store/audit_findings.py: after migration 0009, bulk SQL or a changed rule), in
    batches, straight in the database; how many were judged."""
    import asyncio

    from domain.process import load_catalog
    from store.audit_findings import refresh_stale
    from store.db import make_async_engine, make_session_factory

    async def run() -> int:
        engine = make_async_engine(settings.resolved_database_url)
        try:
            return await refresh_stale(
                make_session_factory(engine),
                load_catalog(settings.processes_dir),
                progress=lambda n: out(f"{n} judged so far"),
            )
        finally:
            await engine.dispose()

    judged = asyncio.run(run())
    out(f"{judged} stale opportunities judged by the practice audit")
    return judged


@contextmanager
def _key_store(database_url: str) -> Iterator[Engine]:
    """The stack's database, for managing keys without a key (the first one included)."""
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import make_sync_engine

    engine = make_sync_engine(database_url)
    try:
        yield engine
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise CliError(
            f"could not store the key in {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Is this the stack's database (DATABASE_URL, NEEDFLOW_DATA_DIR), with its migrations "
            "applied (`make run` applies them)?",
            exit_code=1,
        ) from exc
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ a real cluster


def setup_cluster(settings: Settings, out: Out) -> list[str]:
    """Ready the configured Temporal cluster and namespace (NEEDFLOW_TEMPORAL_*) for
    needflow: connect as the worker and the API do (no payload keys needed), check that
    the namespace exists, and register needflow's search attributes
    (`workflows.client.ensure_search_attributes`: idempotent, a type conflict is an
    error). Where the cluster refuses to add them (Temporal Cloud), prints the tcld
    command that does. Returns the names it added."""
    import asyncio

    from temporalio.api.enums.v1 import NamespaceState
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.client import (
        SearchAttributeError,
        SearchAttributesNotAllowed,
        TemporalConnectError,
        connect,
        describe_connection,
        ensure_search_attributes,
    )

    namespace = settings.namespace
    where = describe_connection(settings)

    async def run() -> list[str]:
        client = await connect(settings, payloads=False)
        out(f"connected to Temporal at {where}")
        try:
            described = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CliError(
                    f"namespace {namespace!r} does not exist on {settings.resolved_temporal_address}: create it "
                    f"(self-hosted: `temporal operator namespace create --namespace {namespace} --retention 30d`; "
                    "Temporal Cloud: `tcld namespace create` or the Cloud UI), then run setup-cluster again",
                    exit_code=1,
                ) from None
            raise
        state = described.namespace_info.state
        if state != NamespaceState.NAMESPACE_STATE_REGISTERED:
            raise CliError(
                f"namespace {namespace!r} exists but is {NamespaceState.Name(state).removeprefix('NAMESPACE_STATE_')}: "
                "needflow needs a registered (active) namespace",
                exit_code=1,
            )
        retention = described.config.workflow_execution_retention_ttl.ToTimedelta()
        out(f"namespace {namespace!r} exists (retention {retention.days} days)")
        setup = await ensure_search_attributes(client, namespace)
        if setup.added:
            out(f"registered search attribute(s): {', '.join(setup.added)}")
        if setup.present:
            out(f"already registered: {', '.join(setup.present)}")
        out(f"namespace {namespace!r} is ready for needflow's worker and API")
        return setup.added

    try:
        return asyncio.run(run())
    except TemporalConnectError as err:
        raise CliError(str(err), exit_code=1) from None
    except SearchAttributesNotAllowed as err:
        flags = " ".join(f'--search-attribute "{item}"' for item in err.missing)
        out(
            "Temporal Cloud adds search attributes with tcld (or in the Cloud UI, Namespaces > "
            f"{namespace} > Search attributes), not through the operator service:"
        )
        out(f"  tcld namespace search-attributes add --namespace {namespace} {flags}")
        out("then run `python starter.py setup-cluster` again to check them. On a self-hosted cluster, the "
            "identity connecting (its client certificate or token) needs Temporal's admin role instead.")  # fmt: skip
        raise CliError(f"search attributes not registered: {err}", exit_code=1) from None
    except SearchAttributeError as err:
        raise CliError(str(err), exit_code=1) from None
    except RPCError as err:
        raise CliError(f"Temporal at {where} answered {err.status.name}: {err.message}", exit_code=1) from None


# ------------------------------------------------------------------------------ needs attention


def _with_payload_keys(settings: Settings) -> Settings:
    """The settings, with the dev stack's payload keys (<data dir>/codec-keys, which
    `make run` makes) when NEEDFLOW_CODEC_KEYS is unset, as `api_key` falls back to the dev
    stack's API key: the dev stack's own reading of them (devstack/stack.py)."""
    from pydantic import SecretStr

    from devstack.stack import StackError, kept_codec_keys

    try:
        keys = kept_codec_keys(settings)
    except StackError as err:
        raise CliError(str(err), exit_code=2) from None
    return settings if keys is None else settings.model_copy(update={"codec_keys": SecretStr(keys)})


def attention_list(settings: Settings, out: Out) -> list[str]:
    """The running workflows whose records failed for good and wait for a repair
    (`NeedsAttention = true`, workflows/attention.py), with what failed; their ids."""
    import asyncio

    from workflows.client import TemporalConnectError, connect

    async def run() -> list[tuple[str, str]]:
        client = await connect(settings, payloads=False)  # a search: no payload to read
        found = []
        async for wf in client.list_workflows('NeedsAttention = true AND ExecutionStatus = "Running"'):
            found.append((wf.id, wf.workflow_type))
        return found

    try:
        found = asyncio.run(run())
    except TemporalConnectError as err:
        raise CliError(str(err), exit_code=1) from None
    if not found:
        out("no workflow needs attention")
    for workflow_id, workflow_type in found:
        out(f"{workflow_id}  ({workflow_type}): see its current details in the Web UI")
    return [workflow_id for workflow_id, _ in found]


def attention_retry(settings: Settings, out: Out, workflow_id: str) -> tuple[int, int]:
    """Run again what failed for good in `workflow_id`, once its cause is repaired (the
    `retry_failed` update); (retried, still blocked)."""
    import asyncio

    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.attention import RETRY_FAILED, Retried
    from workflows.client import TemporalConnectError, connect

    async def run() -> Retried:
        client = await connect(_with_payload_keys(settings))  # its answer is a sealed payload
        handle = client.get_workflow_handle(workflow_id)
        return await handle.execute_update(RETRY_FAILED, result_type=Retried)

    try:
        done = asyncio.run(run())
    except ValueError as err:  # no payload keys: the message says how to set them
        raise CliError(str(err), exit_code=2) from None
    except TemporalConnectError as err:
        raise CliError(str(err), exit_code=1) from None
    except WorkflowUpdateFailedError as err:
        raise CliError(f"{workflow_id}: {getattr(err.cause, 'message', err)}", exit_code=1) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no running workflow {workflow_id!r}", exit_code=1) from None
        raise CliError(f"Temporal answered {err.status.name}: {err.message}", exit_code=1) from None
    out(f"{workflow_id}: {done.retried} retried; {done.still_blocked} still waiting for a repair")
    return done.retried, done.still_blocked


# ------------------------------------------------------------------------------ connection


def api_url(arg: str | None, settings: Settings, environ: Mapping[str, str]) -> str:
    """--api, NEEDFLOW_API_URL, then the local API on NEEDFLOW_API_PORT."""
    return (arg or environ.get("NEEDFLOW_API_URL") or f"http://127.0.0.1:{settings.api_port}").rstrip("/")


def api_key(arg: str | None, settings: Settings, environ: Mapping[str, str]) -> str:
    """--key, NEEDFLOW_API_KEY, NEEDFLOW_DEV_API_KEY, then the dev stack's key file."""
    key = arg or environ.get("NEEDFLOW_API_KEY") or settings.dev_api_key
    if key:
        return key.strip()
    path = settings.dev_api_key_file
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    raise CliError(
        f"no API key: pass --key KEY or set NEEDFLOW_API_KEY. The dev stack (`make run`) writes one "
        f"with every scope to {path.resolve()} (set NEEDFLOW_DATA_DIR if yours is elsewhere); or make one "
        "with `python starter.py api-key create --name me --scopes events:write,crm:write,reports:read,admin,crm:act-as`."
    )
