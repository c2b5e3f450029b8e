"""Where a bank's data file is wrong, said one way: `file: item, field: message`; and
the kinds of string (and number) the API takes, checked one way (the second half).

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

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, PlainValidator, StringConstraints, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

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


# ---------------------------------------------------------------- what the API takes
#
# Every string needflow takes from outside (request bodies, forms, path and query
# parameters, event data, imported books) is one of a few kinds, each refusing the
# characters no store, e-mail header or workflow input should ever carry: control
# characters (U+0000-U+001F, U+007F-U+009F), the line and paragraph separators
# (U+2028, U+2029) and lone surrogates (U+D800-U+DFFF: not characters at all; JSON can
# write them as `\ud800`). PostgreSQL refuses a NUL, an e-mail header a line break: a
# string that passed the API with one would fail its activity on every retry. Only free
# text (descriptions, notes, comments, reasons) may hold line breaks (U+000A) and tabs.
#
# - `Ident`: an id (`cus-…`, `E-DAN`): letters, digits and `_.:-`;
# - `Label`: a short one-line label (a need's kind, a stage key, a channel);
# - `Name`: a person's, employer's, key's or campaign's name; `Place`: a city, a state;
# - `Email`, `Phone`: one line each;
# - `Text`: free text; `line(n)` and `text(n)` for other lengths;
# - `Evidence`: the one evidence rule, for the API's and an import's.
#
# A refused string is a 422 `validation_error` whose `details.errors[]` names the field and
# the character (`U+000A (a line break) at character 7`), type `control_character`.
# Path and query parameters are checked with the same rule before routing
# (api/limits.py); a process file's names and subjects at load (domain/process.py).

#: What no string may hold. Free text may besides hold `\t` and `\n`.
_NOT_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NOT_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_CHARACTER_NAMES = {
    0x00: "NUL",
    0x09: "a tab",
    0x0A: "a line break",
    0x0D: "a carriage return",
    0x1B: "ESC",
    0x7F: "DEL",
    0x2028: "a line separator",
    0x2029: "a paragraph separator",
}


def describe_character(ch: str) -> str:
    """`U+000A (a line break)`: a refused character as a person reads it (never the
    character itself: a lone surrogate cannot even be written as UTF-8)."""
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        what = "a lone surrogate, not a character"
    else:
        what = _CHARACTER_NAMES.get(code, "a control character")
    return f"U+{code:04X} ({what})"


def forbidden_character(value: str, *, free_text: bool = False) -> tuple[int, str] | None:
    """The first character `value` may not hold, as (position from 1, description); None
    when it holds none. `free_text` allows line breaks and tabs."""
    found = (_NOT_IN_TEXT if free_text else _NOT_IN_A_LINE).search(value)
    return (found.start() + 1, describe_character(found.group())) if found else None


def printable(value: str) -> str:
    """`value` with each character no string may hold written as its escape (`\\u000a`):
    for echoing a refused value's place (a dict key in a field path) in an answer."""
    return _NOT_IN_A_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def character_problem(value: str, *, free_text: bool = False) -> str | None:
    """Why `value` is refused, as a sentence; None when it is not."""
    found = forbidden_character(value, free_text=free_text)
    if found is None:
        return None
    position, what = found
    if free_text:
        return f"{what} at character {position} is not allowed: text may hold line breaks and tabs, no other control"
    return f"{what} at character {position} is not allowed: this is one line of text, without control characters"


def _refuse_characters(*, free_text: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        # Runs before the string's own validation: what is not a string is its to refuse.
        if isinstance(value, str) and (problem := character_problem(value, free_text=free_text)):
            raise PydanticCustomError("control_character", problem)
        return value

    return check


#: The check of each kind, as the marker the tests find on every string field.
ONE_LINE = BeforeValidator(_refuse_characters(free_text=False))
FREE_TEXT = BeforeValidator(_refuse_characters(free_text=True))


def line(max_length: int, *, min_length: int = 1, pattern: str | None = None, strip: bool = True) -> Any:
    """One line of at most `max_length` characters, no control character at all."""
    constraints = StringConstraints(
        strip_whitespace=strip, min_length=min_length, max_length=max_length, pattern=pattern
    )
    return Annotated[str, constraints, ONE_LINE]


def text(max_length: int, *, min_length: int = 1) -> Any:
    """Free text of at most `max_length` characters: line breaks and tabs, no other control."""
    return Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length), FREE_TEXT
    ]


ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
Ident = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=ID_PATTERN), ONE_LINE
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), ONE_LINE]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), ONE_LINE]
Place = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), ONE_LINE]
Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"), ONE_LINE]
Phone = Annotated[str, StringConstraints(max_length=40), ONE_LINE]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), FREE_TEXT]

#: The largest whole number needflow takes where a store column holds it (a 32-bit
#: INTEGER); a count beyond it is refused, not left to fail the insert.
INTEGER_MAX = 2**31 - 1
#: A count (transactions, and the like): 0 to INTEGER_MAX.
Count = Annotated[int, Field(ge=0, le=INTEGER_MAX)]
#: Money travels as a decimal string ("500000.00"); the store's NUMERIC(14, 2). 1e400,
#: NaN and Infinity are not finite numbers and are refused.
Money = Annotated[
    Decimal,
    Field(gt=0, max_digits=14, decimal_places=2),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json"),
]

# ---------------------------------------------------------------- evidence

#: The one evidence rule (a checkpoint's, a consent's, an event's data): at most 20 keys,
#: each named like an id, each value at most 2,000 characters. Evidence travels in
#: workflow inputs and histories (an imported open opportunity's checkpoints, every
#: advance), so it is bounded wherever it comes from.
EVIDENCE_KEYS = 20
EVIDENCE_CHARS = 2000
EvidenceKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$"), ONE_LINE]
EvidenceText = Annotated[str, StringConstraints(max_length=EVIDENCE_CHARS), FREE_TEXT]
Evidence = Annotated[dict[EvidenceKey, EvidenceText], Field(max_length=EVIDENCE_KEYS)]

#: The largest integer JSON readers agree on (2**53 - 1).
JSON_INTEGER_MAX = 2**53 - 1


def _kept_value(value: Any) -> Any:
    """An imported evidence value (its characters checked before, as free text's): text of
    at most EVIDENCE_CHARS characters, a finite number, a boolean or null; one error saying
    so, rather than one for each kind it is not."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > JSON_INTEGER_MAX:
        raise PydanticCustomError("evidence_value", "a whole number in evidence is at most 2**53 - 1 either way")
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    if isinstance(value, str) and len(value) > EVIDENCE_CHARS:
        raise PydanticCustomError("string_too_long", f"String should have at most {EVIDENCE_CHARS} characters")
    if not isinstance(value, str | int | float):
        raise PydanticCustomError("evidence_value", "evidence is text, a finite number, true, false or null")
    return value


#: An imported book's evidence: the same keys and bounds as `Evidence`; values as the old
#: CRM kept them (text, a finite number, true, false or null).
KeptValue = Annotated[str | int | float | bool | None, PlainValidator(_kept_value), FREE_TEXT]
ImportedEvidence = Annotated[dict[EvidenceKey, KeptValue], Field(max_length=EVIDENCE_KEYS)]
