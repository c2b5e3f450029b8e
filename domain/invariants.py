"""A record found in a state its rules say cannot be: a bug, or a hand edit, a restore with
constraints off. Retrying reads the same state again, so an activity that meets one stops
and its workflow waits for a repair (activities/errors.py); nothing guesses around it."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class InvariantBroken(Exception):
    """A broken invariant. Its message stays in the code that raised it (it may quote
    data); what leaves the activity is only its kind."""


def required(row: T | None, what: str) -> T:
    """`row`, which an earlier step of the same workflow recorded (the workflow orders its
    writes): missing, it was deleted by hand or lost in a restore, and no retry brings it
    back. `what` names it by id."""
    if row is None:
        raise InvariantBroken(f"{what} is not recorded")
    return row
