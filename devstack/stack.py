"""The whole local stack on embedded defaults: `python -m devstack` (or `make run`).

In order: create the data dir, make the dev API key and the dev payload encryption key
(unless configured), apply migrations, register the dev API key, start the
Temporal dev server (unless NEEDFLOW_TEMPORAL_ADDRESS points at a cluster) and register
needflow's search attributes, then start the worker and the API, wait for /healthz and
print where everything is. Ctrl-C or SIGTERM stops the children in reverse order; if a
child dies on its own the rest are stopped and we exit non-zero naming it.

Logs: the worker's and the API's output goes to stdout prefixed with their name and to
<data_dir>/logs/<name>.log; the Temporal dev server (noisy) logs to <data_dir>/logs/temporal.log
only, and its last lines are shown if it dies.

`python -m devstack --temporal-only` starts just the Temporal part (dev server and search
attributes) and waits for Ctrl-C; handy on its own and for checking that part in isolation.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from config import Settings, get_settings
from devstack import StackError, log
from devstack.children import ChildDied, Children, StopRequested
from devstack.temporal import register_search_attributes, temporal_command

DEV_KEY_NAME = "devstack"
#: The metrics ports `make run` opens (on NEEDFLOW_METRICS_HOST, 127.0.0.1) unless
#: NEEDFLOW_METRICS_PORT / NEEDFLOW_API_METRICS_PORT say otherwise (`off`: none).
DEV_METRICS_PORT = 9464
DEV_API_METRICS_PORT = 9465


# ---------------------------------------------------------------------------- probes


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_free(port: int, what: str, env_var: str) -> None:
    if port_open("127.0.0.1", port):
        raise StackError(f"port {port} ({what}) is already in use: is another stack running? Stop it, or set {env_var}")


# ---------------------------------------------------------------------------- the stack


def dev_api_key(settings: Settings) -> str:
    """NEEDFLOW_DEV_API_KEY if set; else the key kept in <data_dir>/dev-api-key (made once)."""
    if settings.dev_api_key:
        return settings.dev_api_key
    path = settings.dev_api_key_file
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    key = "nf_dev_" + secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def kept_codec_keys(settings: Settings) -> str | None:
    """NEEDFLOW_CODEC_KEYS if set; else the dev stack's keys from <data_dir>/codec-keys if
    `make run` made them; else None. Checked: a malformed entry is a StackError naming it."""
    from workflows.codec import CodecError, KeyRing

    if settings.codec_keys is not None:
        try:
            settings.codec_keyring()
        except CodecError as err:
            raise StackError(str(err)) from None
        return settings.codec_keys.get_secret_value()
    path = settings.dev_codec_keys_file
    if not (path.exists() and path.read_text().strip()):
        return None
    keys = path.read_text().strip()
    try:
        KeyRing.parse(keys, variable=str(path))
    except CodecError as err:
        raise StackError(
            f"{err} (delete it to make a new one: histories encrypted with it become unreadable)"
        ) from None
    return keys


def dev_codec_keys(settings: Settings) -> str:
    """NEEDFLOW_CODEC_KEYS if set; else the dev key kept in <data_dir>/codec-keys (made
    once, beside the Temporal db whose histories it encrypts: `make clean` drops both)."""
    keys = kept_codec_keys(settings)
    if keys is not None:
        return keys
    from workflows.codec import KeyRing

    path = settings.dev_codec_keys_file
    keys = KeyRing.new_entry("dev-" + time.strftime("%Y%m%d"))
    path.write_text(keys + "\n")
    path.chmod(0o600)
    log(f"made a payload encryption key for this dev stack in {path}")
    return keys


def prepare_database(database_url: str, key: str) -> None:
    from store.db import make_sync_engine
    from store.keys import ALL_SCOPES, register_api_key
    from store.migrate import upgrade

    log("applying migrations")
    upgrade(database_url)
    engine = make_sync_engine(database_url)
    try:
        register_api_key(engine, DEV_KEY_NAME, list(ALL_SCOPES), key=key)
    finally:
        engine.dispose()


def shown_url(database_url: str) -> str:
    """The database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return database_url


def start_temporal(settings: Settings, data_dir: Path, log_dir: Path, env: dict[str, str],
                   children: Children) -> str:  # fmt: skip
    """Start the dev server (or use the configured cluster), register the search
    attributes; returns the frontend address."""
    address = settings.resolved_temporal_address
    if settings.temporal_address:
        log(f"using the Temporal cluster at {address} (NEEDFLOW_TEMPORAL_ADDRESS)")
    else:
        check_free(settings.temporal_port, "Temporal frontend", "NEEDFLOW_TEMPORAL_PORT")
        check_free(settings.ui_port, "Temporal Web UI", "NEEDFLOW_UI_PORT")
        log(f"starting the Temporal dev server on {address} (db {data_dir / 'temporal.db'})")
        children.start("temporal", temporal_command(settings, data_dir), env, log_dir, echo=False)
    host, port = split_address(address)
    children.wait_until(f"the Temporal frontend on {address}", lambda: port_open(host, port), timeout=90)
    added = register_search_attributes(settings)
    if added:
        log(f"registered search attribute(s) {', '.join(added)} on namespace {settings.namespace!r}")
    return address


def metrics_ports(settings: Settings) -> tuple[int | None, int | None]:
    """The worker's and the API's metrics ports: on by default here (README "Observability")."""
    worker = settings.metrics_port if "metrics_port" in settings.model_fields_set else DEV_METRICS_PORT
    api = settings.api_metrics_port if "api_metrics_port" in settings.model_fields_set else DEV_API_METRICS_PORT
    return worker, api


def child_env(settings: Settings, data_dir: Path, address: str, codec_keys: str) -> dict[str, str]:
    """The children see the same, fully resolved configuration as this process."""
    env = dict(os.environ)
    worker_metrics, api_metrics = metrics_ports(settings)
    env.update(
        NEEDFLOW_METRICS_PORT=str(worker_metrics or "off"),
        NEEDFLOW_API_METRICS_PORT=str(api_metrics or "off"),
        NEEDFLOW_CODEC_KEYS=codec_keys,
        NEEDFLOW_DATA_DIR=str(data_dir),
        DATABASE_URL=settings.resolved_database_url,
        NEEDFLOW_TEMPORAL_ADDRESS=address,
        NEEDFLOW_NAMESPACE=settings.namespace,
        NEEDFLOW_API_HOST=settings.api_host,
        NEEDFLOW_API_PORT=str(settings.api_port),
        PYTHONUNBUFFERED="1",
    )
    return env


def metrics_banner(settings: Settings) -> str:
    host = "127.0.0.1" if settings.metrics_host in ("", "0.0.0.0", "::") else settings.metrics_host
    shown = [
        f"{who} http://{host}:{port}/metrics"
        for who, port in zip(("worker", "API"), metrics_ports(settings), strict=True)
        if port
    ]
    return "   ".join(shown) or "off (NEEDFLOW_METRICS_PORT, NEEDFLOW_API_METRICS_PORT)"


def banner(settings: Settings, data_dir: Path, address: str, key: str, log_dir: Path) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    if settings.temporal_address:
        ui = f"(not started here: use the Web UI of {address})"
    else:
        ui = f"http://127.0.0.1:{settings.ui_port}/namespaces/{settings.namespace}/workflows"
    rows = [
        ("Temporal Web UI", ui),
        ("Temporal address", f"{address}  namespace {settings.namespace}"),
        ("API", api),
        ("OpenAPI docs", f"{api}/docs   (document: {api}/openapi.json)"),
        ("Database", shown_url(settings.resolved_database_url)),
        ("Dev API key", f"{key}   (every scope; Authorization: Bearer <key>)"),
        (
            "Codec",
            f"{settings.codec_endpoint}   (payloads are encrypted; for the Web UI sign in at "
            f"{settings.codec_endpoint}/sign-in, see README)",
        ),
        ("Metrics", metrics_banner(settings)),
        ("Data dir", str(data_dir)),
        ("Logs", f"worker and api below, prefixed; all in {log_dir}/*.log (temporal.log only there)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    rule = "=" * 78
    return "\n".join(["", rule, "  needflow dev stack is up", rule, *lines, rule,
                      "  Ctrl-C stops everything.", rule, ""])  # fmt: skip


def run(temporal_only: bool = False) -> int:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children()
    with children.signals_handled():
        try:
            if not temporal_only:
                check_free(settings.api_port, "API", "NEEDFLOW_API_PORT")
                for port, what, variable in zip(
                    metrics_ports(settings),
                    ("worker metrics", "API metrics"),
                    ("NEEDFLOW_METRICS_PORT", "NEEDFLOW_API_METRICS_PORT"),
                    strict=True,
                ):
                    if port:
                        check_free(port, what, variable)
                key = dev_api_key(settings)
                codec_keys = dev_codec_keys(settings)
                prepare_database(settings.resolved_database_url, key)
            address = start_temporal(settings, data_dir, log_dir, dict(os.environ), children)
            if temporal_only:
                where = "" if settings.temporal_address else f"; Web UI http://127.0.0.1:{settings.ui_port}"
                log(f"Temporal is up at {address}{where}; Ctrl-C stops")
            else:
                env = child_env(settings, data_dir, address, codec_keys)
                children.start("worker", [sys.executable, "worker.py"], env, log_dir, echo=True)
                api_argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                            "--host", settings.api_host, "--port", str(settings.api_port)]  # fmt: skip
                children.start("api", api_argv, env, log_dir, echo=True)
                health = f"http://{settings.api_host}:{settings.api_port}/healthz"
                children.wait_until(f"the API at {health}", lambda: http_ok(health), timeout=90)
                print(banner(settings, data_dir, address, key, log_dir), flush=True)
            while True:
                children.check()
                time.sleep(0.5)
        except StopRequested as stop:
            log(f"{stop} received; stopping")
            children.stop_all()
            log("stopped")
            return 0
        except ChildDied as died:
            child = died.child
            children.running.remove(child)
            log(f"ERROR: {died}; stopping the rest")
            tail = child.last_lines()
            if tail and not child.echo:
                sys.stdout.write(f"---- last lines of {child.log_path} ----\n{tail}----\n")
            children.stop_all()
            log(f"ERROR: {child.name} died (exit code {child.poll()}); see {child.log_path}")
            return 1
        except StackError as err:
            log(f"ERROR: {err}")
            children.stop_all()
            return 1
        except BaseException:
            children.stop_all()
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--temporal-only", action="store_true",
                        help="start only the Temporal dev server and register the search attributes")  # fmt: skip
    args = parser.parse_args(argv)
    return run(temporal_only=args.temporal_only)
