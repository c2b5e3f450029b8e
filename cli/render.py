"""The API's answers as text for a person: tables of checkpoints, consents and referral
history, short evidence values, times in UTC. Pure functions from JSON to lines, shared
by the commands and the demo so both print the same thing the same way."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cli import Json

_HASH = re.compile(r"^[0-9a-f]{40,}$")
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def value_text(v: Any) -> str:
    """An evidence value, short: hashes abbreviated, times in UTC to the second, and
    quoted when it holds a separator."""
    if not isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if _HASH.match(v):
        return v[:12] + "…"
    if _ISO_TIME.match(v):
        try:
            return datetime.fromisoformat(v).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    return json.dumps(v, ensure_ascii=False) if re.search(r"[,=\s]", v) or not v else v


def evidence_text(evidence: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in evidence.items()) or "-"


def when(iso: str | None) -> str:
    """`2025-01-31 14:05:09 UTC`; `-` for none."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (indent + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def stage_text(opp: Json) -> str:
    """`approved (80%)`, `closed_won (100%, won)`."""
    status = "" if opp["status"] == "open" else f", {opp['status']}"
    return f"{opp['stage']} ({opp['probability']}%{status})"


def checkpoint_table(checkpoints: Sequence[Json], indent: str = "") -> list[str]:
    rows = [
        [c["stage"], when(c["entered_at"]), c["trigger"], c["actor"], evidence_text(c.get("evidence") or {})]
        for c in checkpoints
    ]
    return table(["STAGE", "ENTERED AT", "TRIGGER", "ACTOR", "EVIDENCE"], rows, indent)


def consent_table(consents: Sequence[Json], indent: str = "") -> list[str]:
    rows = [
        [c["channel"], c["product"], c.get("opportunity_id") or "-", when(c["granted_at"]),
         evidence_text(c.get("evidence") or {})]
        for c in consents
    ]  # fmt: skip
    return table(["CHANNEL", "PRODUCT", "OPPORTUNITY", "GRANTED AT", "EVIDENCE"], rows, indent)


def factors_text(referral: Json) -> str:
    """`value_band=250k-1M raises 0.41, city=… lowers 0.2`: what moved the lead score."""
    factors = referral.get("lead_score_factors") or []
    if not factors:
        return "no factors: nothing moved it off the prior"
    return ", ".join(f"{f['feature']}={value_text(f['value'])} {f['effect']} {f['weight']:g}" for f in factors)


def history_table(history: Sequence[Json], indent: str = "") -> list[str]:
    rows = [[h["status"], when(h["at"]), h["actor"], h.get("assignee_id") or "-", h.get("note") or "-"]
            for h in history]  # fmt: skip
    return table(["STATUS", "AT", "ACTOR", "ASSIGNEE", "NOTE"], rows, indent)


def prospect_text(p: Mapping[str, Any]) -> str:
    """`Kiara Jones (prospect: +1…, kiara@…, Acme, San Francisco CA)`."""
    place = " ".join(x for x in (p.get("city"), p.get("state")) if x)
    details = ", ".join(x for x in (p.get("phone"), p.get("email"), p.get("employer"), place) if x)
    return f"{p.get('name', '?')} (prospect" + (f": {details})" if details else ")")


def signature_line(sig: Json | None) -> str | None:
    if not sig:
        return None
    return f"signature: {sig['provider']} envelope {sig['envelope_id']} · {sig['status']}"
