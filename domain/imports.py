"""An imported book of business (`POST /v1/imports`, spec/API.md "Import of a book of
business"): its shape, and every check it must pass before anything is written. Pure: the
store (store/imports.py) looks up the references the book does not hold itself and writes
what `check` planned.

All or nothing, every problem listed: `parse` checks each record's shape on its own (so
one malformed record does not hide the problems of the others), `check` then resolves
every reference and names every unknown product, stage, role, line of business or
channel. Each problem is a `Problem(path, message)`, the path as a person reads it:
`opportunities[3].checkpoints[1].stage`.

References (`customer`, `owner`, `recorded_by`, `need`, `opportunity`, `manager`) name
an external id of the same source (in this book, or imported before from the same
source), or else an existing needflow id. `household` names a household of the source
(made on first use) or an existing needflow household; a customer without one gets a
household of her own.

Records are taken as they were recorded, not checked against the process (the practice
audit, store/audit.py, judges them): a stage only has to exist in its product's process.
Two things are refused because the record could not be kept as it is: an opportunity
without checkpoints, and an `open` one whose last checkpoint closed it (no workflow can
resume there).

Every imported id is `domain.ids.imported_id(prefix, source, kind, external_id)`, so the
same book imported again names the same rows and the store finds them there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from domain.ids import imported_id, opportunity_workflow_id
from domain.opportunity import CLOSED_LOST_STAGE, CheckpointView, ImportedOpportunity
from domain.process import ProcessCatalog, ProcessDefinition
from domain.types import ConsentChannel, LineOfBusiness, Product, Role, Trigger
from domain.validation import (
    Email,
    ImportedEvidence,
    Label,
    Name,
    Phone,
    Place,
    character_problem,
    line,
    printable,
    text,
)

#: The kinds an import counts, in the order they are written (each only refers to kinds
#: before it).
KINDS = ("households", "employees", "customers", "needs", "opportunities", "checkpoints", "consents")
#: The id prefix of each kind's records (checkpoints are numbered rows of their opportunity).
PREFIX = {
    "households": "hh",
    "employees": "emp",
    "customers": "cus",
    "needs": "need",
    "opportunities": "opp",
    "consents": "con",
}

# Every string is one of domain/validation.py's kinds (no control characters; free text
# may hold line breaks and tabs), as the API's own requests are.
Text = text(4000)
#: Evidence as the old CRM kept it, bounded by the one evidence rule (domain/validation.py:
#: 20 keys, 2,000 characters a value), since an open opportunity's checkpoints travel in
#: its workflow's input; numbers finite.
Evidence = ImportedEvidence
ExternalId = line(128)
Ref = line(128)
#: A word of the API's vocabulary (a role, a product, a channel, a stage), checked after.
Word = line(64)
#: What an old CRM kept of a customer: bounded as the API's fields, blank allowed.
KeptEmail = line(320, min_length=0)
KeptName = line(200, min_length=0, strip=False)
KeptPlace = line(100, min_length=0, strip=False)
#: Who entered a checkpoint, as the old system named them.
Actor = line(256)


#: Checkpoints one imported opportunity may bring (OpportunityIn.checkpoints).
MAX_CHECKPOINTS = 50


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmployeeIn(_Record):
    external_id: ExternalId
    name: Name
    email: Email
    role: Word
    line_of_business: Word
    products: list[Word] = Field(default_factory=list)
    cities: list[Place] = Field(default_factory=list)
    states: list[Place] = Field(default_factory=list)
    capacity: int = Field(default=0, ge=0, le=10_000)
    manager: Ref | None = None


class CustomerIn(_Record):
    external_id: ExternalId
    name: Name
    email: KeptEmail | None = None
    phone: Phone | None = None
    employer: KeptName | None = None
    city: KeptPlace | None = None
    state: KeptPlace | None = None
    household: Ref | None = None


class NeedIn(_Record):
    external_id: ExternalId
    customer: Ref
    kind: Label
    description: Text
    recorded_by: Ref
    recorded_at: AwareDatetime


class CheckpointIn(_Record):
    stage: Word
    entered_at: AwareDatetime
    trigger: Trigger
    actor: Actor
    evidence: Evidence = Field(default_factory=dict)


class OpportunityIn(_Record):
    external_id: ExternalId
    customer: Ref
    product: Word
    owner: Ref
    need: Ref | None = None
    amount: Decimal | None = Field(default=None, max_digits=14, decimal_places=2)
    campaign_id: Ref | None = None
    opened_at: AwareDatetime
    status: Literal["open", "won", "lost"]
    lost_reason: Text | None = None
    #: At most MAX_CHECKPOINTS: an open one's checkpoints travel in its workflow's input
    #: (Temporal refuses a payload over 2 MiB; each checkpoint may hold 40 KB of evidence).
    checkpoints: list[CheckpointIn] = Field(default_factory=list, max_length=MAX_CHECKPOINTS)


class ConsentIn(_Record):
    external_id: ExternalId
    customer: Ref
    product: Word
    opportunity: Ref | None = None
    channel: Word
    evidence: Evidence = Field(default_factory=dict)
    granted_at: AwareDatetime


_MODELS: dict[str, type[_Record]] = {
    "employees": EmployeeIn,
    "customers": CustomerIn,
    "needs": NeedIn,
    "opportunities": OpportunityIn,
    "consents": ConsentIn,
}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        # `field` too: the name every other 422 of the API gives the same thing.
        return {"path": self.path, "field": self.path, "message": self.message}


@dataclass
class Book:
    """The records of one import, each shaped right (a malformed one is left out, and its
    problems reported), with their index in the request for the paths."""

    source: str
    employees: list[tuple[int, EmployeeIn]] = field(default_factory=list)
    customers: list[tuple[int, CustomerIn]] = field(default_factory=list)
    needs: list[tuple[int, NeedIn]] = field(default_factory=list)
    opportunities: list[tuple[int, OpportunityIn]] = field(default_factory=list)
    consents: list[tuple[int, ConsentIn]] = field(default_factory=list)
    #: The external ids of every record, malformed ones too: a reference to a malformed
    #: record is not reported as unknown besides its own problems.
    external_ids: dict[str, set[str]] = field(default_factory=dict)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{printable(part)}" if out else printable(part))
    return out


def parse(raw: Any) -> tuple[Book | None, list[Problem]]:
    """Each record's shape, on its own; the book of the well-shaped ones and every problem."""
    if not isinstance(raw, Mapping):
        return None, [Problem("", "an import is a JSON object")]
    problems: list[Problem] = []
    unknown = sorted(set(raw) - {"source", *_MODELS})
    problems += [Problem(k, f"an import has no {k!r} (it has source, {', '.join(_MODELS)})") for k in unknown]
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip() or len(source.strip()) > 64:
        problems.append(Problem("source", "the source is required: a name of the old system, 1 to 64 characters"))
        source = ""
    elif refused := character_problem(source):
        problems.append(Problem("source", refused))
        source = ""
    book = Book(source=source.strip())
    for kind, model in _MODELS.items():
        items = raw.get(kind, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            problems.append(Problem(kind, f"{kind} is a list"))
            continue
        book.external_ids[kind] = {
            item["external_id"]
            for item in items
            if isinstance(item, Mapping) and isinstance(item.get("external_id"), str)
        }
        for i, item in enumerate(items):
            try:
                getattr(book, kind).append((i, model.model_validate(item)))
            except ValidationError as exc:
                for e in exc.errors():
                    problems.append(Problem(_path((kind, i, *e["loc"])), e["msg"]))
    return (book if not problems or book.source else None), problems


# ---------------------------------------------------------------- references


@dataclass
class Known:
    """What the store already holds of the ids a book refers to: each kind's ids, and for
    needs and opportunities their customer's id."""

    ids: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in PREFIX})
    customer_of: dict[str, str] = field(default_factory=dict)


def lookups(book: Book) -> dict[str, set[str]]:
    """The ids to look up in the store, per kind: for each reference the book does not
    resolve itself, the id it would have if imported before from this source, and the
    reference itself as a needflow id. Households: every one named."""
    own = _own_external_ids(book)
    wanted: dict[str, set[str]] = {k: set() for k in PREFIX}

    def want(kind: str, ref: str | None) -> None:
        if ref is not None and ref not in own[kind]:
            wanted[kind] |= {imported_id(PREFIX[kind], book.source, kind, ref), ref}

    for _, e in book.employees:
        want("employees", e.manager)
    for _, c in book.customers:
        if c.household is not None:
            wanted["households"] |= {imported_id("hh", book.source, "households", c.household), c.household}
    for _, n in book.needs:
        want("customers", n.customer)
        want("employees", n.recorded_by)
    for _, o in book.opportunities:
        want("customers", o.customer)
        want("employees", o.owner)
        want("needs", o.need)
    for _, c in book.consents:
        want("customers", c.customer)
        want("opportunities", c.opportunity)
    return wanted


def _own_external_ids(book: Book) -> dict[str, set[str]]:
    own: dict[str, set[str]] = {k: set() for k in PREFIX}
    for kind in _MODELS:
        own[kind] = {r.external_id for _, r in getattr(book, kind)}
    return own


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Every row the import makes, by kind (dicts of column values, ids derived), in the
    order they may be written; and the open opportunities to resume in a workflow."""

    source: str
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    #: {kind: {external_id: id}}: the answer's `ids`.
    ids: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in PREFIX})
    #: Open opportunities: their workflow's start (its process, and the imported facts).
    resume: list[Resume] = field(default_factory=list)


@dataclass(frozen=True)
class Resume:
    opportunity_id: str
    customer_id: str
    owner_id: str
    need_id: str | None
    product: Product
    amount: Decimal | None
    campaign_id: str | None
    process: ProcessDefinition
    imported: ImportedOpportunity


def _enum(value: str, enum: type, what: str, path: str, problems: list[Problem]) -> Any:
    try:
        return enum(value)
    except ValueError:
        problems.append(Problem(path, f"unknown {what} {value!r}; one of {', '.join(e.value for e in enum)}"))
        return None


def check(  # noqa: C901, PLR0912, PLR0915 (one pass over the book, in the contract's order)
    book: Book, catalog: ProcessCatalog, known: Known, campaigns: set[str]
) -> tuple[Plan, list[Problem]]:
    """Resolve every reference and check every vocabulary; the rows to write, or the
    problems (every one). `known`: what the store holds of `lookups(book)`; `campaigns`:
    the campaign ids the book names that exist."""
    src = book.source
    problems: list[Problem] = []
    plan = Plan(source=src)
    own = _own_external_ids(book)

    made: dict[tuple[str, str], str] = {}

    def derived(kind: str, external_id: str) -> str:
        found = made.get((kind, external_id))
        if found is None:
            found = made[(kind, external_id)] = imported_id(PREFIX[kind], src, kind, external_id)
        return found

    def resolve(kind: str, ref: str | None, path: str, label: str) -> str | None:
        if ref is None:
            return None
        if ref in own[kind]:
            return derived(kind, ref)
        mine = derived(kind, ref)
        if mine in known.ids[kind]:
            return mine
        if ref in known.ids[kind]:
            return ref
        if ref in book.external_ids.get(kind, ()):
            return None  # a malformed record of this book: its own problems are listed
        problems.append(
            Problem(path, f"no {label} {ref!r}: neither an external id of source {src!r} nor a needflow id")
        )
        return None

    # Duplicates: one record per external id and kind.
    for kind in _MODELS:
        first: dict[str, int] = {}
        for i, rec in getattr(book, kind):
            if rec.external_id in first:
                problems.append(
                    Problem(
                        f"{kind}[{i}].external_id",
                        f"external id {rec.external_id!r} appears twice (also {kind}[{first[rec.external_id]}])",
                    )
                )
            else:
                first[rec.external_id] = i

    # Employees, managers before the people they manage.
    employee_rows: dict[str, dict[str, Any]] = {}
    manager_of: dict[str, str | None] = {}
    for i, e in book.employees:
        p = f"employees[{i}]"
        role = _enum(e.role, Role, "role", f"{p}.role", problems)
        lob = _enum(e.line_of_business, LineOfBusiness, "line of business", f"{p}.line_of_business", problems)
        for j, product in enumerate(e.products):
            _enum(product, Product, "product", f"{p}.products[{j}]", problems)
        manager = resolve("employees", e.manager, f"{p}.manager", "employee")
        emp_id = derived("employees", e.external_id)
        plan.ids["employees"][e.external_id] = emp_id
        manager_of[emp_id] = manager
        employee_rows[emp_id] = {
            "id": emp_id,
            "name": e.name,
            "email": e.email,
            "role": role.value if role else e.role,
            "line_of_business": lob.value if lob else e.line_of_business,
            "products": list(e.products),
            "cities": list(e.cities),
            "states": list(e.states),
            "capacity": e.capacity,
            "manager_id": manager,
            "active": True,
            "source": src,
            "external_id": e.external_id,
        }
    ordered: list[str] = []
    placed: set[str] = set()

    def place(emp_id: str, chain: tuple[str, ...]) -> None:
        if emp_id in placed or emp_id not in employee_rows:
            return
        if emp_id in chain:
            i = next(i for i, e in book.employees if derived("employees", e.external_id) == emp_id)
            problems.append(Problem(f"employees[{i}].manager", "the managers form a loop"))
            return
        mgr = manager_of.get(emp_id)
        if mgr is not None:
            place(mgr, (*chain, emp_id))
        if emp_id not in placed:
            placed.add(emp_id)
            ordered.append(emp_id)

    for emp_id in employee_rows:
        place(emp_id, ())
    plan.rows["employees"] = [employee_rows[e] for e in ordered]

    # Households and customers.
    households: dict[str, dict[str, Any]] = {}
    for _, c in book.customers:
        cus_id = derived("customers", c.external_id)
        plan.ids["customers"][c.external_id] = cus_id
        hh_key = f"customer/{c.external_id}" if c.household is None else c.household
        hh_id = derived("households", hh_key)
        if c.household is not None and hh_id not in known.ids["households"] and c.household in known.ids["households"]:
            hh_id = c.household  # an existing needflow household
        elif hh_id not in households:
            households[hh_id] = {
                "id": hh_id,
                "name": f"{c.name} household",
                "source": src,
                "external_id": hh_key,
            }
            plan.ids["households"][hh_key] = hh_id
        plan.rows["customers"].append(
            {
                "id": cus_id,
                "household_id": hh_id,
                "name": c.name,
                "email": c.email,
                "phone": c.phone,
                "employer": c.employer,
                "city": c.city,
                "state": c.state,
                "source": src,
                "external_id": c.external_id,
            }
        )
    plan.rows["households"] = list(households.values())

    # Needs.
    need_customer: dict[str, str] = dict(known.customer_of)
    for i, n in book.needs:
        p = f"needs[{i}]"
        need_id = derived("needs", n.external_id)
        plan.ids["needs"][n.external_id] = need_id
        customer = resolve("customers", n.customer, f"{p}.customer", "customer")
        recorded_by = resolve("employees", n.recorded_by, f"{p}.recorded_by", "employee")
        if customer is not None:
            need_customer[need_id] = customer
        plan.rows["needs"].append(
            {
                "id": need_id,
                "customer_id": customer,
                "kind": n.kind,
                "description": n.description,
                "recorded_by": recorded_by,
                "recorded_at": n.recorded_at,
                "source": src,
                "external_id": n.external_id,
            }
        )

    # Opportunities and their checkpoints.
    employee_ext = own["employees"]
    stage_keys: dict[str, list[str]] = {}
    opp_customer: dict[str, str] = dict(known.customer_of)
    for i, o in book.opportunities:
        p = f"opportunities[{i}]"
        opp_id = derived("opportunities", o.external_id)
        plan.ids["opportunities"][o.external_id] = opp_id
        customer = resolve("customers", o.customer, f"{p}.customer", "customer")
        owner = resolve("employees", o.owner, f"{p}.owner", "employee")
        need = resolve("needs", o.need, f"{p}.need", "need")
        if need is not None and customer is not None and need_customer.get(need) not in (None, customer):
            problems.append(Problem(f"{p}.need", f"need {o.need!r} is a need of another customer"))
        if o.campaign_id is not None and o.campaign_id not in campaigns:
            problems.append(Problem(f"{p}.campaign_id", f"no campaign {o.campaign_id!r}"))
        product = _enum(o.product, Product, "product", f"{p}.product", problems)
        process = catalog.latest(product) if product else None
        if product is not None and process is None:
            problems.append(Problem(f"{p}.product", f"{o.product} has no sales process, so no opportunity"))
        if customer is not None:
            opp_customer[opp_id] = customer
        if not o.checkpoints:
            problems.append(Problem(f"{p}.checkpoints", "an opportunity has at least one checkpoint"))
            continue
        views: list[CheckpointView] = []
        keys = stage_keys.setdefault(o.product, [s.key for s in process.stages] if process else [])
        for j, cp in enumerate(o.checkpoints):
            if process is not None and cp.stage != CLOSED_LOST_STAGE and cp.stage not in keys:
                problems.append(
                    Problem(
                        f"{p}.checkpoints[{j}].stage",
                        f"{o.product} has no stage {cp.stage!r}; its stages: {', '.join(keys)}, closed_lost",
                    )
                )
            actor = derived("employees", cp.actor) if cp.actor in employee_ext else cp.actor
            views.append(
                CheckpointView.model_construct(  # its parts are checked already
                    seq=j + 1,
                    stage=cp.stage,
                    entered_at=cp.entered_at,
                    trigger=cp.trigger,
                    actor=actor,
                    via=f"import:{src}",
                    evidence=dict(cp.evidence),
                )
            )
        if process is None:
            continue
        last = views[-1]
        stage = (
            None if last.stage == CLOSED_LOST_STAGE else next((s for s in process.stages if s.key == last.stage), None)
        )
        if o.status == "open" and (last.stage == CLOSED_LOST_STAGE or (stage is not None and stage.outcome == "won")):
            problems.append(
                Problem(f"{p}.status", f"open, but its last checkpoint ({last.stage}) closed it: no work can resume")
            )
        plan.rows["opportunities"].append(
            {
                "id": opp_id,
                "customer_id": customer,
                "product": o.product,
                "process_version": process.version,
                "owner_id": owner,
                "need_id": need,
                "amount": o.amount,
                "referral_id": None,
                "campaign_id": o.campaign_id,
                "stage": last.stage,
                "probability": stage.probability if stage is not None else 0,
                "status": o.status,
                "lost_reason": o.lost_reason,
                "last_seq": last.seq,
                "workflow_id": opportunity_workflow_id(opp_id),
                "opened_at": o.opened_at,
                "closed_at": last.entered_at if o.status != "open" else None,
                "source": src,
                "external_id": o.external_id,
            }
        )
        for v in views:
            plan.rows["checkpoints"].append(
                {
                    "opportunity_id": opp_id,
                    "seq": v.seq,
                    "stage": v.stage,
                    "entered_at": v.entered_at,
                    "trigger": v.trigger.value,
                    "actor": v.actor,
                    "via": v.via,
                    "evidence": v.evidence,
                }
            )
        if o.status == "open" and product is not None and customer and owner:
            plan.resume.append(
                Resume(
                    opportunity_id=opp_id,
                    customer_id=customer,
                    owner_id=owner,
                    need_id=need,
                    product=product,
                    amount=o.amount,
                    campaign_id=o.campaign_id,
                    process=process,
                    imported=ImportedOpportunity(
                        source=src, external_id=o.external_id, opened_at=o.opened_at, checkpoints=views
                    ),
                )
            )

    # Consents.
    for i, c in book.consents:
        p = f"consents[{i}]"
        con_id = derived("consents", c.external_id)
        plan.ids["consents"][c.external_id] = con_id
        customer = resolve("customers", c.customer, f"{p}.customer", "customer")
        opportunity = resolve("opportunities", c.opportunity, f"{p}.opportunity", "opportunity")
        if opportunity is not None and customer is not None and opp_customer.get(opportunity) not in (None, customer):
            problems.append(Problem(f"{p}.opportunity", f"opportunity {c.opportunity!r} is another customer's"))
        product = _enum(c.product, Product, "product", f"{p}.product", problems)
        channel = _enum(c.channel, ConsentChannel, "channel", f"{p}.channel", problems)
        plan.rows["consents"].append(
            {
                "id": con_id,
                "customer_id": customer,
                "opportunity_id": opportunity,
                "product": product.value if product else c.product,
                "channel": channel.value if channel else c.channel,
                "evidence": dict(c.evidence),
                "granted_at": c.granted_at,
                "actor": f"import:{src}",
                "via": None,
                "source": src,
                "external_id": c.external_id,
            }
        )
    return plan, problems
