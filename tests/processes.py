"""needflow as separate processes, for tests that need real ones (a worker to SIGKILL):
a Temporal dev server, workers (`python worker.py`) and API processes (uvicorn), started
the way devstack starts them, on free ports, with the environment a deployment gives
them and nothing of the developer's own NEEDFLOW_* variables.

The children are devstack's (`devstack/children.py`): each one's output is kept in
<log_dir>/<name>.log, each runs in its own session and gets SIGTERM if the test process
dies. `ProcessStack.stop()` stops them in reverse order (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from devstack.children import Child, Children
from devstack.temporal import register_search_attributes, search_attribute_args, temporal_cli
from tests.helpers import TEST_CODEC_KEYS, IsolatedSettings

#: Variables a developer's shell may hold that would change what a child process does.
_OWN_VARIABLES = ("NEEDFLOW_", "DOCUSIGN_", "OTEL_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def identity(pid: int) -> str:
    """The Temporal identity a process's client reports (the SDK's default: pid@host):
    what histories record as the worker that took a task."""
    return f"{pid}@{socket.gethostname()}"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def scrape(url: str) -> dict[str, float]:
    """A Prometheus /metrics page as {'name{labels}': value}; empty when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{.*\}})?$")
    total = 0.0
    for key, value in samples.items():
        if pattern.match(key) and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


class ProcessStack:
    """The children of one test, and the configuration they share."""

    def __init__(self, log_dir: Path, database_url: str) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.children = Children()
        self.temporal_address = ""
        self.data_dir = log_dir / "data"
        self.data_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ Temporal

    def start_temporal(self) -> str:
        """A headless dev server on a free port (in memory: nothing outlives the test),
        needflow's search attributes given on its command line as `make run` gives them."""
        port = free_port()
        argv = [
            temporal_cli(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--log-level", "warn",
            *search_attribute_args(),
        ]  # fmt: skip
        self.children.start("temporal", argv, self.environment(), self.log_dir, echo=False)
        self.temporal_address = f"127.0.0.1:{port}"
        return self.temporal_address

    async def temporal_ready(self, seconds: float = 60.0) -> None:
        """Wait for the frontend, then register the search attributes as devstack does after
        every start (idempotent; retried while the server is still coming up)."""
        host, port = self.temporal_address.split(":")
        await self.wait_until("the Temporal frontend", lambda: _port_open(host, int(port)), seconds)
        settings = IsolatedSettings(temporal_address=self.temporal_address)
        await asyncio.to_thread(register_search_attributes, settings, seconds)

    # ------------------------------------------------------------------ needflow

    def environment(self, **variables: str) -> dict[str, str]:
        """This process's environment minus needflow's own variables, plus the deployment's
        shared configuration (docs/deployment.md) and these."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES) and k != "DATABASE_URL"}
        env.update(
            DATABASE_URL=self.database_url,
            NEEDFLOW_CODEC_KEYS=TEST_CODEC_KEYS,
            NEEDFLOW_DATA_DIR=str(self.data_dir),
            NEEDFLOW_NAMESPACE="default",
            PYTHONUNBUFFERED="1",
        )
        if self.temporal_address:
            env["NEEDFLOW_TEMPORAL_ADDRESS"] = self.temporal_address
        env.update(variables)
        return env

    def start_worker(self, name: str, **variables: str) -> Child:
        """`python worker.py`, as devstack runs it."""
        return self.children.start(
            name, [sys.executable, "worker.py"], self.environment(**variables), self.log_dir, echo=False
        )

    def start_api(self, name: str, port: int, **variables: str) -> Child:
        """The API under uvicorn, as devstack runs it, on 127.0.0.1:`port`."""
        argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        env = self.environment(NEEDFLOW_API_HOST="127.0.0.1", NEEDFLOW_API_PORT=str(port), **variables)
        return self.children.start(name, argv, env, self.log_dir, echo=False)

    # ------------------------------------------------------------------ waiting and stopping

    async def wait_until(self, what: str, check: Callable[[], bool], seconds: float) -> None:
        """Poll the (blocking) `check` until true; fail naming `what` and the log of a child
        that died meanwhile, or after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not await asyncio.to_thread(check):
            self.check_alive(what)
            if loop.time() > deadline:
                raise AssertionError(f"{what}: not within {seconds:g} s (logs in {self.log_dir})")
            await asyncio.sleep(0.2)

    def check_alive(self, waiting_for: str) -> None:
        """Fail, with its last lines, if a child has exited (none should on its own)."""
        for child in self.children.running:
            if child.poll() is not None:
                raise AssertionError(
                    f"{child.name} exited with code {child.poll()} while waiting for {waiting_for}; "
                    f"see {child.log_path}:\n{child.last_lines()}"
                )

    def stop(self) -> None:
        """Stop every child still running, in reverse order; a killed one is reaped."""
        self.children.stop_all()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
