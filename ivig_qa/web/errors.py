"""Errors as JSON with the request id: the body, the handlers, the index-down 503."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ivig_qa.index import UNAVAILABLE_ERRORS
from ivig_qa.web.middleware import request_id_of, request_logger
from ivig_qa.web.schemas import ErrorResponse, FieldError

log = request_logger(__name__)

NOT_READY_RETRY_S = 5  # Retry-After of every 503
INDEX_UNAVAILABLE = "The answer index is unreachable right now; please try again shortly."


def error_json(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
    code = {422: "invalid_request", 429: "rate_limited", 503: "not_ready"}.get(status)
    code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    body = ErrorResponse(error=code, message=message, request_id=request_id_of(request), **extra)
    return JSONResponse(body.model_dump(), status_code=status)


def internal_error(request: Request) -> JSONResponse:
    """The 500 for a crash: no detail of it, only the request id to find it in the log."""
    return error_json(request, 500, "Something went wrong on our side; please try again.")


def field_name(loc: tuple[Any, ...]) -> str:
    """``("body", "history", 2, "role")`` → ``history[2].role``."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def field_error(error: dict[str, Any]) -> FieldError:
    """One pydantic error as the field it is about and a sentence (no echo of the input)."""
    if error.get("type") == "json_invalid":
        where = error["loc"][-1] if isinstance(error["loc"][-1], int) else "?"
        reason = error.get("ctx", {}).get("error", "")
        return FieldError(field="body", message=f"Invalid JSON at character {where} ({reason})")
    return FieldError(field=field_name(tuple(error["loc"])), message=error["msg"])


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors with the request id for every failure; tracebacks stay in the server log."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [field_error(e) for e in exc.errors()]
        summary = "; ".join(f"{d.field}: {d.message}" for d in details)
        return error_json(request, 422, f"Invalid request — {summary}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_json(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def index_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """A dead, hung or rebuilding index server: 503 at once (not a 500, not a hang)."""
        log.warning("index unavailable: %s", exc)
        body = ErrorResponse(
            error="index_unavailable", message=INDEX_UNAVAILABLE, request_id=request_id_of(request)
        )
        headers = {"Retry-After": str(NOT_READY_RETRY_S)}
        return JSONResponse(body.model_dump(), status_code=503, headers=headers)

    for exc_type in UNAVAILABLE_ERRORS:
        app.add_exception_handler(exc_type, index_unavailable)
