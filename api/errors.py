"""The one error shape of spec/API.md: {"error": {"code", "message", "details"}}.

Every refusal answers in it, whatever refused: a route, pydantic (422 `validation_error`
with `details.errors[]`, each naming its `field`), a body FastAPI could not read (malformed
JSON, invalid UTF-8, a number of more than 4,300 digits, nesting too deep: 422 as malformed
JSON), the request guard of api/limits.py (413 `payload_too_large`, 422 for a path or
query parameter), the access guard of api/access.py (401 before a body is read, 429
`rate_limited` with `Retry-After`: api/ratelimit.py), or a failure (500). An answer
never fails to render: text it echoes is written with JSON escapes if it holds what
UTF-8 cannot encode (a lone surrogate).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.validation import printable


class ErrorBody(BaseModel):
    #: What refused, for programs: `validation_error`, `unauthenticated`, `forbidden`,
    #: `not_found`, `conflict`, `invalid_transition`, `payload_too_large`, ...
    code: str
    #: What refused, for people.
    message: str
    #: More for programs: `errors[]` (each with its `field`) for `validation_error`.
    details: dict[str, Any]


class ErrorOut(BaseModel):
    """The one error shape of spec/API.md."""

    error: ErrorBody


#: The refusals a route may answer, declared on every route of the OpenAPI document so
#: that /docs shows the real shape (not FastAPI's default 422 body, which the API never
#: sends). api/app.py includes every router with them.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in (
        (401, "No API key, or an unknown or revoked one (`unauthenticated`)"),
        (403, "The key lacks the route's scope, or may not act as that employee (`forbidden`)"),
        (404, "No such resource (`not_found`)"),
        (409, "Refused in the resource's present state (`invalid_transition`), or a reused key or id (`conflict`)"),
        (413, "The request body is over the limit (`payload_too_large`)"),
        (422, "The request is not valid: `details.errors[]` names each field (`validation_error`)"),
        (429, "Too many requests from this API key or address; `Retry-After` says when to retry (`rate_limited`)"),
        (500, "needflow failed; nothing was changed unless the answer says so (`internal_error`)"),
    )
}

ERROR_RESPONSES[429]["headers"] = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
}

#: A command's workflow did not answer within NEEDFLOW_UPDATE_DEADLINE (api/workflows.py).
ERROR_RESPONSES[503] = {
    "model": ErrorOut,
    "description": "The workflow has not answered in time (`timeout`); `details.id` names the resource or event. "
    "The command may still take effect: repeat the same request (same Idempotency-Key or event id) after "
    "`Retry-After` for its outcome",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before repeating the request",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return _ErrorResponse(self.body(), status_code=self.status, headers=headers)


class _ErrorResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:  # a lone surrogate echoed from the request
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class RaisedApiError(StarletteHTTPException):
    """An ApiError raised where only an HTTPException passes: while FastAPI reads a body,
    it turns any other exception into a 400 (api/limits.py raises its 413 so)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


def field_path(loc: Iterable[str | int]) -> str:
    """A problem's field as the API names it: pydantic's location, dotted (`evidence.realtor`);
    a refused dict key is written with escapes for what it must not hold."""
    return ".".join(printable(str(part)) for part in loc)


def not_found(what: str, id: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {id!r}", {"id": id})


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(422, "validation_error", message, details)


def refused(problems: Sequence[dict[str, str]], prefix: str = "", whole: str = "request") -> ApiError:
    """422 `validation_error` naming every problem (each a dict with its `field`, `message`
    and, where known, `type`) in `details.errors[]`; the message is `prefix`, then the
    first problem's field (`whole` when it is about the whole of it) and message, and how
    many more there are. Every 422 with `errors[]` is built here: pydantic's, the request
    guard's, an event's data, an import."""
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{prefix}{first['field'] or whole}: {first['message']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more)"
    return ApiError(422, "validation_error", message, {"errors": list(problems)})


def invalid_transition(message: str, **details: Any) -> ApiError:
    return ApiError(409, "invalid_transition", message, details)


_STATUS_CODES = {
    400: "validation_error",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
}

#: FastAPI's words for a body it could not read at all (its cause says why).
_UNREADABLE_BODY = "There was an error parsing the body"


def _unreadable(cause: BaseException | None) -> str:
    """Why a JSON body could not be read, for a person."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body is nested too deeply to be read"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return "a number in the body has too many digits (at most 4,300)"
    return "the body is not valid JSON"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            if e["type"] == "json_invalid":
                position = e["loc"][-1] if e["loc"] else "?"
                problems.append(
                    {"field": "", "message": f"the body is not valid JSON (at character {position})", "type": e["type"]}
                )
            else:
                field = field_path(p for p in e["loc"] if p != "body")
                problems.append({"field": field, "message": e["msg"], "type": e["type"]})
        return refused(problems).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, RaisedApiError):
            return exc.error.response()
        if exc.status_code == 400 and exc.detail == _UNREADABLE_BODY:
            # Malformed JSON is a 422 in the contract, whatever made it unreadable.
            problem = {"field": "", "message": _unreadable(exc.__cause__), "type": "json_invalid"}
            return ApiError(422, "validation_error", problem["message"], {"errors": [problem]}).response()
        code = _STATUS_CODES.get(exc.status_code, "error")
        return ApiError(exc.status_code, code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(
            500,
            "internal_error",
            "the server failed to handle this request; retrying it with the same Idempotency-Key is safe",
            {},
        ).response()
