"""Errors as JSON with the request id: the body, the handlers, the 401/413/431 responses, the 503s."""

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ivig_qa.feedback import FeedbackUnavailableError
from ivig_qa.index import UNAVAILABLE_ERRORS
from ivig_qa.policy.input import InvalidQuestion
from ivig_qa.web.middleware import loggable, request_id_of, request_logger
from ivig_qa.web.schemas import ErrorResponse, FieldError

log = request_logger(__name__)

NOT_READY_RETRY_S = 5  # Retry-After of every 503
INDEX_UNAVAILABLE = "The answer index is unreachable right now; please try again shortly."
FEEDBACK_BUSY = "Feedback cannot be saved right now; please try again shortly."
_CODES = {
    401: "unauthorized",
    413: "body_too_large",
    431: "headers_too_large",
    422: "invalid_request",
    429: "rate_limited",
    503: "not_ready",
}


def error_json(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
    code = _CODES.get(status)
    code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    body = ErrorResponse(error=code, message=message, request_id=request_id_of(request), **extra)
    return JSONResponse(body.model_dump(), status_code=status)


def internal_error(request: Request) -> JSONResponse:
    """The 500 for a crash: no detail of it, only the request id to find it in the log."""
    return error_json(request, 500, "Something went wrong on our side; please try again.")


def body_too_large(max_bytes: int) -> Callable[[Request], JSONResponse]:
    """The 413 for a body over ``max_bytes`` (sent before the body is read)."""

    def respond(request: Request) -> JSONResponse:
        return error_json(request, 413, f"The request body is larger than {max_bytes:,} bytes.")

    return respond


def headers_too_large(max_bytes: int) -> Callable[[Request], JSONResponse]:
    """The 431 for a request line and headers over ``max_bytes``."""

    def respond(request: Request) -> JSONResponse:
        return error_json(request, 431, f"The request headers are larger than {max_bytes:,} bytes.")

    return respond


def unauthorized(header: str) -> Callable[[Request], JSONResponse]:
    """The 401 for a request without the configured API key."""

    def respond(request: Request) -> JSONResponse:
        return error_json(request, 401, f"Missing or wrong {header} header.")

    return respond


def gradio_refusal(request: Request, status: int, message: str) -> JSONResponse:
    """A closed or malformed call to the chat's Gradio routes (logged in one line, no traceback)."""
    log.info("refused %s %s: %s", request.method, loggable(request.url.path), message)
    return error_json(request, status, message)


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

    @app.exception_handler(InvalidQuestion)
    async def invalid_input(request: Request, exc: InvalidQuestion) -> JSONResponse:
        """The domain's input rule (``policy.input``) broken: 422 naming the field."""
        detail = FieldError(field=exc.field, message=str(exc))
        return error_json(request, 422, f"Invalid request — {exc.field}: {exc}", details=[detail])

    @app.exception_handler(FeedbackUnavailableError)
    async def feedback_busy(request: Request, exc: FeedbackUnavailableError) -> JSONResponse:
        log.warning("feedback not stored: %s", exc)
        body = ErrorResponse(error="busy", message=FEEDBACK_BUSY, request_id=request_id_of(request))
        headers = {"Retry-After": str(NOT_READY_RETRY_S)}
        return JSONResponse(body.model_dump(), status_code=503, headers=headers)

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
