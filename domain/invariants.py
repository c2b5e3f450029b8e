"""A record found in a state its rules say cannot be: a bug, or a hand edit, a restore with
constraints off. Retrying reads the same state again, so an activity that meets one stops
and its workflow waits for a repair (activities/errors.py); nothing guesses around it."""

from __future__ import annotations


class InvariantBroken(Exception):
    """A broken invariant. Its message stays in the code that raised it (it may quote
    data); what leaves the activity is only its kind."""
