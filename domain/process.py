"""Product processes as data: the stages a product's opportunity passes through.

A process file (YAML, one per product and version, in `processes/`) is validated here
at load. A malformed file stops the process that loads it with a message naming the
file, the stage and the field, rendered by `domain.validation` in the same form as a
routing rules file's. Workflows receive the whole validated definition in
their input, so a process edited tomorrow never changes an opportunity started today.

A file is also checked at load for everything its activities will need (`usable_problems`),
since a process that passes its own schema but names a template that does not render, or a
subject an e-mail header cannot carry, would fail an activity on every retry, long after
the file was deployed:

- a `request_signature` names a document template (`esign/templates/<name>.html`) that
  exists and renders for a customer with every detail and for one with none; its
  `subject` is one line (no control characters) of at most `SUBJECT_MAX` characters;
- the process's and each stage's `name` is one line of at most `NAME_MAX` characters (they
  are shown in the workflow's summary and details);
- each stage's evidence keys are keys the API takes (domain/validation.py `EvidenceKey`),
  at most `EVIDENCE_KEYS` of them, so a manual move can supply them;
- a stage entered by an event names as evidence only fields of that event's data
  (domain/events.py: data is closed per type), and a lost event's `reason_field` is one.

These are checked at load only, not by the models: a workflow's input holds its process,
and a stricter model must not refuse the process of an opportunity started before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from domain.events import data_fields
from domain.types import ConsentChannel, EventType, Product
from domain.validation import (
    EVIDENCE_KEYS,
    EvidenceKey,
    ItemList,
    Loc,
    character_problem,
    describe_errors,
    file_message,
)

StageKey = str


class ProcessError(ValueError):
    """A process file that cannot be used; the message says where and why."""


class StageEntry(BaseModel):
    """How a stage may be entered.

    - `create`: only as the first stage, when the opportunity is opened.
    - `manual`: by the owner (or a manager), with the stage's evidence.
    - `event`: only by the named backend event, whose data carries the evidence.
    - `signature`: only when the customer's e-signature is complete.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["create", "manual", "event", "signature"]
    event: EventType | None = None

    @model_validator(mode="after")
    def _event_named_iff_event_kind(self) -> StageEntry:
        if self.kind == "event" and self.event is None:
            raise ValueError("an entry of kind 'event' must name its event")
        if self.kind != "event" and self.event is not None:
            raise ValueError(f"an entry of kind {self.kind!r} cannot name an event")
        return self


class SignatureSpec(BaseModel):
    """Documents sent for e-signature when a stage is entered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    subject: str


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: StageKey = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    probability: int = Field(ge=0, le=100)
    entry: StageEntry
    #: Evidence keys a manual move must supply, or the event's data must carry.
    evidence: tuple[str, ...] = ()
    #: Entering this stage records the customer's consent through this channel.
    consent: ConsentChannel | None = None
    #: Entering this stage sends these documents for e-signature.
    request_signature: SignatureSpec | None = None
    #: The stage that wins the opportunity (exactly one, the last).
    outcome: Literal["won"] | None = None


class LostEvent(BaseModel):
    """A backend event that closes the opportunity lost from the named stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: EventType
    from_stages: tuple[StageKey, ...] = Field(min_length=1)
    reason_field: str = "reason"


class ProcessDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    product: Product
    version: int = Field(ge=1)
    name: str
    #: Fields the opportunity must be opened with, beyond the customer's need.
    creation_requires: tuple[Literal["amount"], ...] = ()
    stages: tuple[Stage, ...] = Field(min_length=2)
    lost_events: tuple[LostEvent, ...] = ()

    @model_validator(mode="after")
    def _coherent(self) -> ProcessDefinition:
        keys = [s.key for s in self.stages]
        if len(set(keys)) != len(keys):
            raise ValueError(f"stage keys must be unique, got {keys}")
        if self.stages[0].entry.kind != "create":
            raise ValueError("the first stage must be entered by 'create'")
        for s in self.stages[1:]:
            if s.entry.kind == "create":
                raise ValueError(f"only the first stage may be entered by 'create', not {s.key!r}")
        if self.stages[-1].outcome != "won" or any(s.outcome for s in self.stages[:-1]):
            raise ValueError("exactly the last stage must have outcome 'won'")
        for before, after in zip(self.stages, self.stages[1:], strict=False):
            if after.probability < before.probability:
                raise ValueError(f"probability falls from {before.key!r} to {after.key!r}")
        for i, s in enumerate(self.stages):
            if s.entry.kind == "signature" and (i == 0 or self.stages[i - 1].request_signature is None):
                raise ValueError(f"stage {s.key!r} is entered by signature, so the stage before it must request one")
        if not any(s.consent or s.entry.kind == "signature" for s in self.stages):
            raise ValueError("the process must record the customer's consent before it is won")
        events = [s.entry.event for s in self.stages if s.entry.event] + [e.event for e in self.lost_events]
        if len(set(events)) != len(events):
            raise ValueError("an event may enter or close at most one stage")
        for lost in self.lost_events:
            for key in lost.from_stages:
                if key not in keys:
                    raise ValueError(f"lost event {lost.event.value!r} names unknown stage {key!r}")
        return self

    def stage(self, key: StageKey) -> Stage:
        for s in self.stages:
            if s.key == key:
                return s
        raise KeyError(key)

    def index(self, key: StageKey) -> int:
        return [s.key for s in self.stages].index(key)

    def next_stage(self, key: StageKey) -> Stage | None:
        i = self.index(key)
        return self.stages[i + 1] if i + 1 < len(self.stages) else None

    def stage_entered_by(self, event: EventType) -> Stage | None:
        return next((s for s in self.stages if s.entry.event == event), None)

    def lost_event(self, event: EventType) -> LostEvent | None:
        return next((e for e in self.lost_events if e.event == event), None)


#: How a process file's messages name a stage: by key and position.
STAGES = ItemList(field="stages", noun="stage", name_field="key")

#: The longest e-mail subject of a signature request: DocuSign's (esign/docusign.py
#: `EMAIL_SUBJECT_MAX`), which would cut a longer one.
SUBJECT_MAX = 100
#: The longest process or stage name (shown in a workflow's summary and details).
NAME_MAX = 100
_EVIDENCE_KEY = TypeAdapter(EvidenceKey)


def load_process(path: Path) -> ProcessDefinition:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProcessError(file_message(path, (), f"cannot read process file: {exc}")) from exc
    try:
        process = ProcessDefinition.model_validate(raw)
    except ValidationError as exc:
        raise ProcessError(describe_errors(path, raw, exc, items=STAGES, whole="process")) from exc
    if problems := usable_problems(process):
        raise ProcessError(
            "\n".join(
                file_message(path, loc, message, items=STAGES, raw=raw, whole="process") for loc, message in problems
            )
        )
    return process


def _one_line(value: str, max_length: int) -> str | None:
    if problem := character_problem(value):
        return problem
    if not value.strip():
        return "must not be blank"
    if len(value) > max_length:
        return f"is {len(value)} characters long; at most {max_length}"
    return None


def usable_problems(process: ProcessDefinition) -> list[tuple[Loc, str]]:
    """What an activity would fail on, for ever, in a process that passed its schema
    (module docstring): each as (location in the file, message)."""
    problems: list[tuple[Loc, str]] = []
    if refused := _one_line(process.name, NAME_MAX):
        problems.append((("name",), f"the process's name {refused}"))
    for i, stage in enumerate(process.stages):
        if refused := _one_line(stage.name, NAME_MAX):
            problems.append((("stages", i, "name"), f"a stage's name {refused}"))
        if len(stage.evidence) > EVIDENCE_KEYS:
            problems.append(
                (("stages", i, "evidence"), f"at most {EVIDENCE_KEYS} evidence keys, not {len(stage.evidence)}")
            )
        for j, key in enumerate(stage.evidence):
            try:
                _EVIDENCE_KEY.validate_python(key)
            except ValidationError:
                problems.append(
                    (
                        ("stages", i, "evidence", j),
                        f"evidence key {key!r} is not one the API takes: 1 to 64 of A-Z a-z 0-9 _ . -",
                    )
                )
        if stage.entry.event is not None:
            carried = data_fields(stage.entry.event)
            for j, key in enumerate(stage.evidence):
                if key not in carried:
                    problems.append(
                        (
                            ("stages", i, "evidence", j),
                            f"evidence {key!r} is not in a {stage.entry.event.value!r} event's data, so the stage could "
                            f"never be entered; its data holds: {', '.join(sorted(carried))}",
                        )
                    )
        if stage.request_signature is not None:
            spec = stage.request_signature
            if refused := _one_line(spec.subject, SUBJECT_MAX):
                problems.append((("stages", i, "request_signature", "subject"), f"the e-mail subject {refused}"))
            if refused := template_problem(spec.template):
                problems.append((("stages", i, "request_signature", "template"), refused))
    for i, lost in enumerate(process.lost_events):
        carried = data_fields(lost.event)
        if lost.reason_field not in carried:
            problems.append(
                (
                    ("lost_events", i, "reason_field"),
                    f"{lost.reason_field!r} is not in a {lost.event.value!r} event's data; it holds: "
                    f"{', '.join(sorted(carried))}",
                )
            )
    return problems


def template_problem(template: str) -> str | None:
    """Why the document template `template` cannot be sent for signature, or None: it
    must exist and render (esign/documents.py) for a customer with every detail recorded
    and for one with none (no city, state, amount or need)."""
    # Imported here: workflows import this module, and only a loader renders documents.
    from datetime import UTC, datetime
    from decimal import Decimal

    from jinja2 import TemplateNotFound

    from esign.documents import TEMPLATES, DocumentContext, render_document

    at = datetime(2026, 1, 1, tzinfo=UTC)
    contexts = (
        DocumentContext(
            opportunity_id="opp-sample",
            product="sample",
            customer_name="Sample Customer",
            customer_city="Sample City",
            customer_state="NY",
            amount=Decimal("500000.00"),
            owner_name="Sample Adviser",
            need_description="A need as recorded,\nover two lines",
            issued_at=at,
        ),
        DocumentContext(
            opportunity_id="opp-sample",
            product="sample",
            customer_name="Sample Customer",
            owner_name="Sample Adviser",
            need_description="",
            issued_at=at,
        ),
    )
    try:
        for ctx in contexts:
            render_document(template, ctx)
    except TemplateNotFound:
        return f"no document template {template!r} ({TEMPLATES / (template + '.html')} does not exist)"
    except Exception as exc:  # noqa: BLE001 (whatever fails it would fail the activity: say what)
        return f"document template {template!r} does not render: {type(exc).__name__}: {exc}"
    return None


class ProcessCatalog:
    """Every version of every product's process; new opportunities take the latest."""

    def __init__(self, processes: list[ProcessDefinition]) -> None:
        self._by_key: dict[tuple[Product, int], ProcessDefinition] = {}
        for p in processes:
            if (p.product, p.version) in self._by_key:
                raise ProcessError(f"{p.product.value} version {p.version} is defined twice")
            self._by_key[(p.product, p.version)] = p

    def latest(self, product: Product) -> ProcessDefinition | None:
        versions = [p for (prod, _), p in self._by_key.items() if prod == product]
        return max(versions, key=lambda p: p.version) if versions else None

    def get(self, product: Product, version: int) -> ProcessDefinition | None:
        return self._by_key.get((product, version))

    def products(self) -> list[Product]:
        return sorted({prod for prod, _ in self._by_key})


def load_catalog(directory: Path) -> ProcessCatalog:
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        raise ProcessError(file_message(directory, (), "no process files (*.yaml) found"))
    seen: dict[tuple[Product, int], Path] = {}
    processes = []
    for f in files:
        p = load_process(f)
        if (first := seen.get((p.product, p.version))) is not None:
            raise ProcessError(
                file_message(f, ("version",), f"{p.product.value} version {p.version} is defined in {first.name} too")
            )
        seen[(p.product, p.version)] = f
        processes.append(p)
    return ProcessCatalog(processes)
