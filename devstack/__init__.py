"""The local development stack, `python -m devstack` (`make run`), split by what each
part does: the Temporal dev server and its executables (`temporal`), the child processes
and how they are stopped (`children`), and the stack that puts them together (`stack`).

Here is what every part shares: the error a person must fix, and how devstack talks.
"""

from __future__ import annotations


class StackError(Exception):
    """Something the person running the stack must fix; printed without a traceback."""


def log(msg: str) -> None:
    print(f"[devstack] {msg}", flush=True)
