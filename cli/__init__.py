"""needflow's command-line client, behind `python starter.py` (whose docstring is the
user's help). Split by concern: the HTTP client (`http`), text rendering (`render`), the
commands (`commands`), argv to exit code (`main`) and the demo stories (`demo`).

This module holds what every part shares: the error a person must fix and the two type
aliases, so each is defined once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Where a command's lines go: print for a person, a list's append in a test.
Out = Callable[[str], None]
#: A JSON object as the API sends and receives it.
Json = dict[str, Any]


class CliError(Exception):
    """Something the person must fix; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
