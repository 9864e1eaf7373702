"""Request ids, the crash guard, and log lines (text or JSON) that carry the request id."""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Request
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_request_id: ContextVar[str] = ContextVar("request_id", default="-")
# What a request learned while it was handled (e.g. its answer's status), for its access log line.
# A dict, so a value noted in a worker thread or a streaming task is seen by the middleware.
_request_notes: ContextVar[dict[str, Any] | None] = ContextVar("request_notes", default=None)
# The fields a JSON log line carries when a record has them (``extra=``), besides the basics.
LOG_FIELDS = ("method", "route", "path", "status", "duration_ms", "answer_status", "answer_id", "engine")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request can be matched to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


def request_logger(name: str) -> logging.Logger:
    """The module's logger, its records stamped with the request id being handled."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
        logger.addFilter(RequestIdFilter())
    return logger


log = request_logger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message and the request's fields.

    Questions reach a log line only where ``log_questions`` put them in the message; JSON
    escaping keeps any control character in a message from breaking the line.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: int = logging.INFO, fmt: Literal["text", "json"] = "text") -> None:
    """Log lines with the request id, for ``ivig-qa serve`` and ``python ui.py`` (``log_format``)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/sources/{doc_id}``), never the raw path; else ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else "unmatched"


def note_request(**facts: Any) -> None:
    """Add facts to the current request's access log line (no-op outside a request)."""
    notes = _request_notes.get()
    if notes is not None:
        notes.update(facts)


class RequestIdMiddleware:
    """Gives each request an id (the caller's ``X-Request-ID`` when it is sane).

    The id goes into the response header, ``request.state.request_id`` and, through a
    context variable, into every log record made while the request is handled.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = _request_id.set(request_id)
        notes: dict[str, Any] = {}
        notes_token = _request_notes.set(notes)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            level = logging.INFO if scope["path"].startswith("/api/") else logging.DEBUG
            ms = (time.perf_counter() - started) * 1000
            fields = {"method": scope["method"], "route": route_template(scope), "path": scope["path"]}
            fields |= {"status": status, "duration_ms": round(ms, 1), **notes}
            log.log(level, "%s %s %d %.0fms", scope["method"], scope["path"], status, ms, extra=fields)
            _request_notes.reset(notes_token)
            _request_id.reset(token)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or _request_id.get()


class CrashGuardMiddleware:
    """Turns an unhandled exception into ``respond(request)`` (traceback to the log only).

    Starlette's own 500 handler re-raises after responding, which makes the server drop
    the connection; answering here keeps the client's connection and gives it the id.
    """

    def __init__(self, app: ASGIApp, *, respond: Callable[[Request], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: ASGIMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a JSON body: the server closes the connection
            await self.respond(Request(scope))(scope, receive, send)
