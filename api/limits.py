"""The request guard: what every request must be before any route reads it.

A pure ASGI middleware (`RequestGuard`, registered in api/app.py), so that it runs before
routing and never holds a body:

- **Body size.** A body larger than its path's limit answers 413 `payload_too_large` in
  the API's error shape (`details.limit_bytes`). A `Content-Length` over the limit is
  answered at once, `Connection: close`, without reading a byte of the body; a body
  without one (chunked) is counted as it arrives and refused the moment it passes the
  limit. Nothing here buffers a body: the route reads it as before. Limits:

  | path | limit | why |
  | --- | --- | --- |
  | `POST /v1/imports` | 128 MiB (`max_import_bytes`) | a book of business: about 140,000 opportunities with their customers, needs, checkpoints and consents (100,000 are about 87 MB). A larger book is imported in parts (a reference resolves to a record imported before from the same source) |
  | `/codec/*` | 8 MiB | Temporal payloads to encode or decode for the Web UI; Temporal refuses a payload over 2 MiB |
  | anything else | 1 MiB (`max_body_bytes`) | a command or an event is a few kilobytes; evidence at most 20 × 2,000 characters |

  The two configurable limits are the settings' `max_body_bytes` and `max_import_bytes`
  (NEEDFLOW_MAX_BODY_BYTES, NEEDFLOW_MAX_IMPORT_BYTES); these defaults without settings.

- **Path and query parameters** (and the stored `Idempotency-Key` header) refuse control
  characters by the one rule of domain/validation.py (`character_problem`, one line: none
  at all), and a query parameter that is not UTF-8: 422 `validation_error`, each of
  `details.errors[]` naming its field as FastAPI names parameters (`path.customer_id`,
  `query.to`, `header.Idempotency-Key`). Checked before routing, so no route, dependency or
  store ever sees one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote_plus

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, RaisedApiError, refused
from domain.validation import character_problem

MiB = 1024 * 1024
#: Every body but the ones below.
MAX_BODY = 1 * MiB
#: POST /v1/imports: a whole book of business.
MAX_IMPORT_BODY = 128 * MiB
#: The codec server's payloads (api/routers/codec.py).
MAX_CODEC_BODY = 8 * MiB

IMPORTS = "/v1/imports"
CODEC = "/codec"
#: Headers the API keeps (in the store): checked as parameters are.
CHECKED_HEADERS = ("Idempotency-Key",)


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n:,} bytes"


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the request body is larger than {_size(limit)}, the most this path takes",
        {"limit_bytes": limit},
    )


def _problem(field: str, message: str, type_: str = "control_character") -> dict[str, str]:
    return {"field": field, "message": message, "type": type_}


class RequestGuard:
    """The guard of the module docstring. `settings` may carry `max_body_bytes` and
    `max_import_bytes`; `limits` replaces the per-path limits (tests)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: object = None,
        *,
        max_body: int | None = None,
        limits: Iterable[tuple[str, int]] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body or getattr(settings, "max_body_bytes", None) or MAX_BODY
        imports = getattr(settings, "max_import_bytes", None) or MAX_IMPORT_BODY
        self.limits = tuple(limits if limits is not None else ((IMPORTS, imports), (CODEC, MAX_CODEC_BODY)))

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if problems := [*_path_problems(scope), *_query_problems(scope["query_string"]), *_header_problems(scope)]:
            await refused(problems).response()(scope, receive, send)
            return

        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = too_large(limit).response()
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException: FastAPI, reading the body, lets only those through.
                    raise RaisedApiError(too_large(limit))
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except RaisedApiError as exc:
            # Raised past the app's own handlers (a route that read the body itself).
            if started or exc.error.status != 413:
                raise
            await exc.error.response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _path_problems(scope: Scope) -> list[dict[str, str]]:
    path: str = scope["path"]
    problem = character_problem(path)
    if problem is None:
        return []
    # Name the parameter as a route's 422 would (`path.customer_id`), if a route takes it.
    for name, value in _path_params(scope).items():
        if isinstance(value, str) and (refused := character_problem(value)):
            return [_problem(f"path.{name}", refused)]
    return [_problem("path", problem)]


def _path_params(scope: Scope) -> dict[str, Any]:
    """The path parameters of the first route whose path template matches, by name.
    Only asked for a refused path (rare), so the templates are compiled then."""
    app = scope.get("app")
    for template in _templates(getattr(app, "routes", ())):
        found = compile_path(template)[0].match(scope["path"])
        if found is not None and found.groupdict():
            return found.groupdict()
    return {}


def _templates(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    for route in routes:
        # FastAPI keeps an included router's routes behind it, with the include's prefix.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _templates(inner.routes, prefix + getattr(getattr(route, "include_context", None), "prefix", ""))
        elif isinstance(getattr(route, "path", None), str):
            yield prefix + route.path


def _query_problems(query: bytes) -> list[dict[str, str]]:
    problems = []
    for pair in query.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            name = unquote_plus(raw_name.decode("latin-1"), encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            problems.append(_problem("query", "a parameter's name is not valid UTF-8", "string_unicode"))
            continue
        if refused := character_problem(name):
            problems.append(_problem("query", f"a parameter's name: {refused}"))
            continue
        try:
            value = unquote_plus(raw_value.decode("latin-1"), encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            problems.append(_problem(f"query.{name}", "is not valid UTF-8", "string_unicode"))
            continue
        if refused := character_problem(value):
            problems.append(_problem(f"query.{name}", refused))
    return problems


def _header_problems(scope: Scope) -> list[dict[str, str]]:
    wanted = {h.lower().encode("latin-1"): h for h in CHECKED_HEADERS}
    problems = []
    for name, value in scope["headers"]:
        # As UTF-8 (bytes 0x80-0x9f read as Latin-1 would be C1 controls, not a character's part).
        if name in wanted and (refused := character_problem(value.decode("utf-8", errors="replace"))):
            problems.append(_problem(f"header.{wanted[name]}", refused))
    return problems
