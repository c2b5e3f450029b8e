"""The one error shape of spec/API.md: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def not_found(what: str, id: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {id!r}", {"id": id})


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(422, "validation_error", message, details)


def invalid_transition(message: str, **details: Any) -> ApiError:
    return ApiError(409, "invalid_transition", message, details)


_STATUS_CODES = {
    400: "validation_error",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "validation_error",
}


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
                field = ".".join(str(p) for p in e["loc"] if p != "body")
                problems.append({"field": field, "message": e["msg"], "type": e["type"]})
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        message = f"{first['field'] or 'request'}: {first['message']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more)"
        return ApiError(422, "validation_error", message, {"errors": problems}).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
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
