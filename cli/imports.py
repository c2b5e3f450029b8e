"""`python starter.py import FILE`: post a book of business (spec/API.md, "Import of a book
of business") to `POST /v1/imports` and print what was created and what was already there.
A refused import (422) prints every problem with its path, and nothing was written."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from cli import CliError, Json, Out
from cli.http import ApiFailure

#: An import of a large book (100,000 opportunities) takes minutes, not seconds.
IMPORT_TIMEOUT = httpx.Timeout(1800.0, connect=5.0)


def read_book(path: str) -> Json:
    """The file's JSON object, or a CliError saying what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        book = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(book, dict):
        raise CliError(f"{path} must hold a JSON object with source, employees, customers, ...")
    return book


def import_book(http: httpx.Client, out: Out, path: str) -> Json:
    """Post the file to POST /v1/imports and print the counts, kind by kind."""
    book = read_book(path)
    r = http.post("/v1/imports", json=book, timeout=IMPORT_TIMEOUT)
    if r.status_code != 200:
        failure = ApiFailure.from_response(r)
        for problem in failure.details.get("errors", []):
            if isinstance(problem, dict):
                out(f"  {problem.get('path') or '(import)'}: {problem.get('message')}")
        raise failure
    answer = r.json()
    out(f"imported {book.get('source')!r}:")
    out(f"  {'kind':<14}{'created':>9}{'unchanged':>11}")
    for kind, created in answer["created"].items():
        out(f"  {kind:<14}{created:>9}{answer['unchanged'].get(kind, 0):>11}")
    return answer
