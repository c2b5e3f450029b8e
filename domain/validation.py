"""Where a bank's data file is wrong, said one way: `file: item, field: message`.

Process files (`processes/*.yaml`) and routing rules (`rules/routing.yaml`) are written by
the bank, not by developers, and a malformed one stops the service at start. Whoever reads
the message must find the spot without knowing pydantic, and should not have to learn a
second way of pointing at it for the second kind of file. So both loaders render their
errors here:

- the **file**, as the loader was given it;
- the **item** of the file's list (a stage, a rule) by its key or name *and* its position,
  as the file shows them (`stage 'searching' (#2)`, `rule 'brokers' (#1)`); by position
  alone (`rule #1`) when it has no usable name — missing, or read by YAML as something else
  than text (an unquoted `on` is True);
- the **field**: the dotted path inside the item (`entry.event`, `match.states`), or inside
  the file when the error is not in an item (`fallback_queue`);
- the **message**: pydantic's, or the model's own check, with pydantic's Python words
  replaced by the file's (the file has lists, not tuples).

Pure: no I/O; the loaders read the file and raise their own error type with the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

Loc = Sequence[str | int]


@dataclass(frozen=True)
class ItemList:
    """A file's list of named items: its top-level key, what one item is called, and the
    item's field that names it (e.g. `stages`, `stage`, `key`)."""

    field: str
    noun: str
    name_field: str

    def describe(self, raw: object, index: int) -> str:
        """`stage 'searching' (#2)`, or `stage #2` when item #2 has no text name."""
        items = raw.get(self.field) if isinstance(raw, dict) else None
        name = None
        if isinstance(items, list) and 0 <= index < len(items) and isinstance(items[index], dict):
            name = items[index].get(self.name_field)
        if isinstance(name, str) and name:
            return f"{self.noun} {name!r} (#{index + 1})"
        return f"{self.noun} #{index + 1}"


def file_message(
    path: Path | str,
    loc: Loc,
    message: str,
    *,
    items: ItemList | None = None,
    raw: object = None,
    whole: str | None = None,
) -> str:
    """One line: `file: item, field: message`.

    `loc` is pydantic's error location in the file's document (`("stages", 1, "probability")`);
    when it enters `items`' list, the item is named from `raw` (the document as read) and the
    rest of the location is the field. With neither item nor field, `whole` names what the
    message is about (`process`, `routing rules`); without `whole` the line is `file: message`
    (a file that cannot be read at all).
    """
    rest = list(loc)
    where = []
    if items is not None and len(rest) >= 2 and rest[0] == items.field and isinstance(rest[1], int):
        where.append(items.describe(raw, rest[1]))
        rest = rest[2:]
    field = ".".join(str(part) for part in rest)
    if field:
        where.append(f"field {field!r}")
    if not where and whole is not None:
        where.append(whole)
    return f"{path}: {', '.join(where)}: {message}" if where else f"{path}: {message}"


def _echo(error: ErrorDetails) -> bool:
    """pydantic's `too_short` for a list whose items failed: the file's list is long enough
    (its `input` is the list as written), only the invalid items were not counted. The items'
    own errors say what is wrong; the echo would claim the list is too short."""
    if error["type"] != "too_short":
        return False
    written, minimum = error.get("input"), (error.get("ctx") or {}).get("min_length")
    return isinstance(written, list) and isinstance(minimum, int) and len(written) >= minimum


def _file_words(message: str) -> str:
    """pydantic speaks of the model's tuples; the file (YAML) has lists."""
    return message.replace("Tuple should", "List should").replace("a valid tuple", "a valid list")


def describe_errors(path: Path | str, raw: object, err: ValidationError, *, items: ItemList, whole: str) -> str:
    """Every error of validating `raw` (the document read from `path`), one `file_message`
    line each, in pydantic's order."""
    return "\n".join(
        file_message(path, e["loc"], _file_words(e["msg"]), items=items, raw=raw, whole=whole)
        for e in err.errors()
        if not _echo(e)
    )
