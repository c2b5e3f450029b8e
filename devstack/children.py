"""The stack's child processes: each one's output copied to its log (and stdout), and
`Children`, which starts them, notices one dying, waits on them and stops them in
reverse order, also on Ctrl-C or SIGTERM. Whether a stop is under way is kept on the
`Children` object, which the signal handler belongs to, rather than in a global."""

from __future__ import annotations

import collections
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from config import PROJECT_ROOT
from devstack import StackError, log

STOP_TIMEOUT = 10.0  # seconds a child gets to exit after SIGTERM before SIGKILL


class ChildDied(Exception):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited unexpectedly with code {child.poll()}")
        self.child = child


class StopRequested(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler. A KeyboardInterrupt, so that neither a retry
    loop (`except Exception`) nor asyncio's callback error handler swallows it."""


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if devstack itself dies (Linux only), so a
    killed devstack leaves no orphaned server behind."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


class Child:
    """A subprocess whose output is copied, line by line, to <logs>/<name>.log and,
    when `echo` is set, to stdout prefixed by its name."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, echo: bool) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self.echo = echo
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            # Own session: Ctrl-C in the terminal reaches only devstack, which then stops
            # the children itself, in reverse order.
            start_new_session=True,
            preexec_fn=_die_with_parent if _prctl is not None else None,  # noqa: PLW1509
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line)
            self._log.write(line)
            self._log.flush()
            if self.echo:
                sys.stdout.write(f"{self.name:<8}| {line}")
                sys.stdout.flush()
        self._log.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc.poll() is None:
            log(f"stopping {self.name} (pid {self.proc.pid})")
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout:.0f}s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=2.0)

    def last_lines(self) -> str:
        self._pump.join(timeout=2.0)
        return "".join(self.tail)


class Children:
    """The stack's running children, in start order, and whether they are being stopped:
    a second Ctrl-C while stopping must not interrupt the stopping."""

    def __init__(self) -> None:
        self.running: list[Child] = []
        self.stopping = False

    def start(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, *, echo: bool) -> Child:
        child = Child(name, argv, env, log_dir, echo)
        self.running.append(child)
        return child

    def check(self) -> None:
        """Raise ChildDied for the first child that has exited."""
        for child in self.running:
            if child.poll() is not None:
                raise ChildDied(child)

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll `check()` until true; fail early if a child died, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            self.check()
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.25)

    def stop_all(self) -> None:
        self.stopping = True
        for child in reversed(self.running):
            child.stop()
        self.running.clear()

    @contextlib.contextmanager
    def signals_handled(self) -> Iterator[None]:
        """Inside, SIGINT and SIGTERM raise StopRequested (unless already stopping); the
        previous handlers are restored on the way out."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping:  # a second Ctrl-C while stopping: keep stopping in order
            log("already stopping; children that don't exit are killed after a timeout")
            return
        raise StopRequested(signal.Signals(signum).name)
