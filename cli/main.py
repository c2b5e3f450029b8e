"""From argv to an exit code: the parser of every command and option, the dispatch to
`cli.commands` and `cli.demo`, and the one place errors become `error: ...` on stderr.
`python starter.py` is a thin wrapper over `run`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import httpx

from cli import CliError, Out
from cli.commands import (
    api_key,
    api_url,
    attention_list,
    attention_retry,
    create_api_key,
    list_api_keys,
    parse_event_data,
    refresh_audit,
    revoke_api_key,
    send_event,
    setup_cluster,
    show_referral,
    show_timeline,
)
from cli.demo import STORIES, run_demo
from cli.http import TIMEOUT
from cli.imports import import_book
from config import Settings, get_settings
from store.keys import ALL_SCOPES


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of `python starter.py`; `description` heads its --help."""
    # --api/--key work before or after the command (SUPPRESS: a subcommand that was not
    # given them keeps the top-level value).
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--api", default=argparse.SUPPRESS, help="API base URL (env NEEDFLOW_API_URL)")
    conn.add_argument("--key", default=argparse.SUPPRESS, help="API key (env NEEDFLOW_API_KEY)")

    parser = argparse.ArgumentParser(
        prog="python starter.py", description=description,
        epilog="Run `python starter.py COMMAND -h` for a command's options.",
    )  # fmt: skip
    parser.add_argument("--api", default=None, help="API base URL (env NEEDFLOW_API_URL)")
    parser.add_argument("--key", default=None, help="API key (env NEEDFLOW_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    key_cmd = commands.add_parser("api-key", help="manage API keys (in the database)")
    key_sub = key_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", help="register a new API key and print it once")
    create.add_argument("--name", required=True, help="who the key is for, e.g. mobile-app")
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(ALL_SCOPES)}")
    create.add_argument("--employee", metavar="EMPLOYEE_ID", help="bind the key to this employee: it acts as them only")
    key_sub.add_parser("list", help="every key: id, name, scopes, employee, active or revoked (never the key)")
    revoke = key_sub.add_parser("revoke", help="revoke a key: it answers 401 from its next request on")
    revoke.add_argument("key_id", metavar="KEY_ID")

    event = commands.add_parser("event", help="backend events")
    event_sub = event.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = event_sub.add_parser("send", parents=[conn], help="send an event to POST /v1/events")
    send.add_argument("--type", required=True, dest="event_type", help="e.g. mortgage.application_submitted")
    subject = send.add_mutually_exclusive_group(required=True)
    subject.add_argument("--opportunity", metavar="ID", help="the opportunity the event is about")
    subject.add_argument("--customer", metavar="ID", help="the customer the event is about")
    send.add_argument("--id", dest="event_id", help="event id (default: a new one); a repeat is a duplicate")
    data = send.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="JSON", help="the event's data as a JSON object")
    data.add_argument("--set", action="append", metavar="KEY=VALUE", help="a data field (string); repeatable")
    send.add_argument("--occurred-at", metavar="ISO", help="when it happened (default: now)")

    timeline = commands.add_parser("timeline", parents=[conn], help="an opportunity's checkpoints")
    timeline.add_argument("opportunity_id", metavar="OPPORTUNITY_ID")

    referral = commands.add_parser("referral", help="referrals")
    referral_sub = referral.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = referral_sub.add_parser("show", parents=[conn], help="a referral's status, scores and history")
    show.add_argument("referral_id", metavar="REFERRAL_ID")

    book = commands.add_parser("import", parents=[conn], help="import a book of business (POST /v1/imports)")
    book.add_argument("file", metavar="FILE", help="the book as JSON: source, employees, customers, needs, ...")

    audit = commands.add_parser("audit", help="the practice audit's kept verdicts (in the database)")
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_sub.add_parser("refresh", help="judge the opportunities whose kept verdicts are stale (after a migration)")

    attention = commands.add_parser(
        "attention", help="workflows whose records failed for good and wait for a repair (NeedsAttention)"
    )
    attention_sub = attention.add_subparsers(dest="action", required=True, metavar="ACTION")
    attention_sub.add_parser("list", help="the running workflows that need attention")
    retry = attention_sub.add_parser("retry", help="once the cause is repaired, run again what failed for good")
    retry.add_argument("workflow_id", help="e.g. opportunity-opp_…, as `attention list` or the Web UI shows it")

    commands.add_parser(
        "setup-cluster",
        help="ready the configured Temporal cluster (NEEDFLOW_TEMPORAL_*): check the namespace, register "
        "needflow's search attributes",
    )

    stories = "play Rachel's story (seed 000) and Kiara's referral (seed 003)"
    demo = commands.add_parser("demo", parents=[conn], help=stories)
    demo.add_argument("--run-id", help="replay an earlier run: its keys make every step a repeat")
    demo.add_argument("--only", choices=STORIES, help="play only this story")
    return parser


def run(argv: Sequence[str] | None = None, settings: Settings | None = None,
        environ: Mapping[str, str] | None = None, *, description: str | None = None) -> int:  # fmt: skip
    """Parse `argv`, run the command; its exit code: 0 done, 1 the API refused or could
    not be reached, 2 wrong usage or setup (argparse exits with 2 itself)."""
    args = build_parser(description).parse_args(argv)
    settings = settings or get_settings()
    environ = os.environ if environ is None else environ
    out: Out = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.command == "api-key" and args.action == "list":
            list_api_keys(settings.resolved_database_url, out)
            return 0
        if args.command == "api-key" and args.action == "revoke":
            revoke_api_key(settings.resolved_database_url, args.key_id)
            print(f"API key {args.key_id} revoked: it answers 401 from now on.", file=sys.stderr)
            return 0
        if args.command == "setup-cluster":
            setup_cluster(settings, out)
            return 0
        if args.command == "attention" and args.action == "list":
            attention_list(settings, out)
            return 0
        if args.command == "attention":
            attention_retry(settings, out, args.workflow_id)
            return 0
        if args.command == "audit":
            refresh_audit(settings, out)
            return 0
        if args.command == "api-key":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            key = create_api_key(settings.resolved_database_url, args.name, scopes, args.employee)
            out(key)
            print(f"API key {args.name!r} ({', '.join(scopes)}) created; only its hash is stored, so keep it "
                  "now: it cannot be shown again.", file=sys.stderr)  # fmt: skip
            return 0
        base_url = api_url(args.api, settings, environ)
        key = api_key(args.key, settings, environ)
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url, headers=auth, timeout=TIMEOUT) as http:
            if args.command == "event":
                send_event(
                    http, out, type_=args.event_type, opportunity_id=args.opportunity,
                    customer_id=args.customer, event_id=args.event_id,
                    data=parse_event_data(args.data, args.set), occurred_at=args.occurred_at,
                )  # fmt: skip
            elif args.command == "timeline":
                show_timeline(http, out, args.opportunity_id)
            elif args.command == "referral":
                show_referral(http, out, args.referral_id)
            elif args.command == "import":
                import_book(http, out, args.file)
            elif args.command == "demo":
                ui = f"http://127.0.0.1:{settings.ui_port}/namespaces/{settings.namespace}/workflows"
                run_demo(http, out, run_id=args.run_id, ui_url=ui, only=args.only)
        return 0
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except httpx.HTTPError as exc:
        print(f"error: talking to the API failed: {exc!r}", file=sys.stderr)
        return 1
