"""Request ids, the crash guard, and log lines that carry the request id."""

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from fastapi import Request
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_request_id: ContextVar[str] = ContextVar("request_id", default="-")


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


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines with the request id, for ``ivig-qa serve`` and ``python ui.py``."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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
            log.log(level, "%s %s %d %.0fms", scope["method"], scope["path"], status, ms)
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
