"""Workflow code runs outside temporalio's sandbox in a deployed worker (worker.py
`workflow_runner`): each module of workflows/ is imported once and shared by every run the
worker holds, where the sandbox gave each run a fresh copy. So a module must hold nothing
a run could change and the next one see; the sandbox's other check (no clock, random or
I/O in workflow code) stays on in every in-process test (tests/helpers.py)."""

from __future__ import annotations

import importlib
import pkgutil
from collections import deque
from types import ModuleType

import workflows

#: What one run could change and another then see, if a module kept one at its top level.
MUTABLE = (list, dict, set, bytearray, deque)


def _modules() -> list[ModuleType]:
    return [workflows] + [
        importlib.import_module(f"workflows.{m.name}") for m in pkgutil.iter_modules(workflows.__path__)
    ]


def test_workflow_modules_hold_no_state_a_run_could_change() -> None:
    found = [
        f"{module.__name__}.{name}: {type(value).__name__}"
        for module in _modules()
        for name, value in vars(module).items()
        if not name.startswith("__") and isinstance(value, MUTABLE)
    ]
    assert found == [], "module-level containers are shared by every run of an unsandboxed worker"


def test_the_check_sees_the_modules() -> None:
    names = {module.__name__ for module in _modules()}
    assert {"workflows.opportunity", "workflows.referral", "workflows.daily", "workflows.mail"} <= names
