"""Around every request: its id, log lines safe to print (text or JSON), the crash guard, the
API key, the security headers of pages, and the door to the chat's Gradio routes."""

import base64
import gzip
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import brotli
from fastapi import Request
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
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


# Control characters (C0, DEL, C1), line/paragraph separators and bidi overrides: a log line
# that quotes them raw can be split in two (a forged line) or can drive the terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_LOGGED_CHARS = 300


def loggable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` safe to quote in a log line: unprintables as ``\\xNN`` escapes, at most ``limit`` chars."""
    escaped = _UNPRINTABLE.sub(_escape, text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request can be matched to it, and
    escapes control characters in the message, so nothing quoted can forge a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it as usual
            return True
        if _UNPRINTABLE.search(message):
            record.msg, record.args = _UNPRINTABLE.sub(_escape, message), None
        return True


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


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
            fields = {
                "method": scope["method"],
                "route": route_template(scope),
                "path": loggable(scope["path"]),
            }
            fields |= {"status": status, "duration_ms": round(ms, 1), **notes}
            log.log(
                level, "%s %s %d %.0fms", scope["method"], loggable(scope["path"]), status, ms, extra=fields
            )
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
            log.exception("unhandled error on %s %s", scope.get("method"), loggable(scope.get("path", "")))
            if started:
                raise  # too late for a JSON body: the server closes the connection
            await self.respond(Request(scope))(scope, receive, send)


class ApiKeyMiddleware:
    """When a key is configured, every path under ``prefixes`` but the public ones needs it in
    ``header`` (constant-time compare); checked before the body is read or parsed."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        key: str | None,
        header: str,
        prefixes: tuple[str, ...],
        public: Collection[str],
        respond: Callable[[Request], Response],
    ) -> None:
        self.app = app
        self.key = key.encode() if key else None
        self.header = header
        self.prefixes = prefixes
        self.public = frozenset(public)
        self.respond = respond

    def allows(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.key is None or not path.startswith(self.prefixes) or path in self.public:
            return True
        given = Headers(scope=scope).get(self.header, "").encode()
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allows(scope):
            await self.respond(Request(scope))(scope, receive, send)
            return
        await self.app(scope, receive, send)


_INLINE_SCRIPT = re.compile(rb"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)


def page_policy(
    *,
    frame_ancestors: Collection[str],
    script_hashes: Collection[str] = (),
    also_from: Collection[str] = (),
    allow_eval: bool = False,
) -> str:
    """The content security policy of a page: its own origin only (and ``also_from`` for
    scripts, styles and images), inline scripts by hash, framed only by ``frame_ancestors``.
    ``allow_eval`` lets the page's own scripts compile strings (Gradio's HTML templates)."""
    others = "".join(f" {o}" for o in also_from)
    scripts = " ".join(
        [f"'self'{others}", *(["'unsafe-eval'"] if allow_eval else []), *(f"'{h}'" for h in script_hashes)]
    )
    ancestors = " ".join(["'self'", *frame_ancestors])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self'{others} 'unsafe-inline'; "
        f"img-src 'self'{others} data: blob:; font-src 'self' data:; connect-src 'self'; "
        "media-src 'self' blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
        "form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )


def inline_script_hashes(html: bytes) -> list[str]:
    """``sha256-…`` sources for each inline ``<script>`` of a page, as CSP matches them."""
    return [
        "sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode("ascii")
        for m in _INLINE_SCRIPT.finditer(html)
    ]


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "br":
        return brotli.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    return body


class SecurityHeadersMiddleware:
    """``nosniff`` on every response; on every HTML page, a referrer policy and, unless the
    page sets its own, a content security policy (no third-party origins; framing only by
    ``frame_ancestors``; the page's own inline scripts allowed by their hashes).

    The Gradio chat page has inline scripts (its config among them), so its body is read,
    before the headers go out, to hash them; pages are small, so this costs little. Gradio
    renders its HTML components by compiling templates (``Function``), so the pages at
    ``eval_pages`` (the chat) may evaluate strings; no page may run an inline script it
    did not ship.
    """

    def __init__(
        self, app: ASGIApp, *, frame_ancestors: Collection[str], eval_pages: Collection[str] = ()
    ) -> None:
        self.app = app
        self.frame_ancestors = list(frame_ancestors)
        self.eval_pages = frozenset(eval_pages)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: ASGIMessage | None = None
        body: list[bytes] = []

        async def secured(message: ASGIMessage) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if not headers.get("content-type", "").startswith("text/html"):
                    await send(message)
                    return
                headers.setdefault("Referrer-Policy", "no-referrer")
                if "content-security-policy" in headers:
                    await send(message)
                    return
                held = message  # hold the headers until the body is known
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            whole = b"".join(body)
            headers = MutableHeaders(scope=held)
            try:
                hashes = inline_script_hashes(_decoded(whole, headers.get("content-encoding", "")))
            except Exception:  # an encoding we cannot read: no inline script may run
                log.warning("could not read a page to hash its scripts: %s", loggable(scope["path"]))
                hashes = []
            headers["Content-Security-Policy"] = page_policy(
                frame_ancestors=self.frame_ancestors,
                script_hashes=hashes,
                allow_eval=scope["path"] in self.eval_pages,
            )
            await send(held)
            await send({"type": "http.response.body", "body": whole, "more_body": False})

        await self.app(scope, receive, secured)


@dataclass(frozen=True)
class ChatEvent:
    """What one event of the chat takes: how many input values, and whether event data
    (the clicked message of a like, the picked example) comes with it."""

    inputs: int
    event_data: bool = False


class _EventData(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int | list[int]
    value: Any


class _QueueJoin(BaseModel):
    """What the chat page posts to ``/gradio_api/queue/join`` to run one of its events."""

    model_config = ConfigDict(extra="allow")
    data: list[Any]
    fn_index: int
    session_hash: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    trigger_id: int | None = None
    # An event's data: a component's (index, value), or the text a page script hands over (the
    # restored conversation); either is bounded by the body cap.
    event_data: _EventData | str | None = None


# (method, path pattern) pairs the chat page uses; every other Gradio route is closed.
_CHAT_ROUTES = [
    (("GET", "HEAD"), re.compile(r"^/(|config|theme\.css|favicon\.ico|robots\.txt|manifest\.json)$")),
    (("GET", "HEAD"), re.compile(r"^/(assets|static|svelte)/[^?#]+$")),
    # app_id: what the page polls after an outage, to reload (and restore) once the server is back.
    (("GET",), re.compile(r"^/gradio_api/(heartbeat/[A-Za-z0-9_-]{1,64}|queue/data|app_id)$")),
    (("POST",), re.compile(r"^/gradio_api/queue/join$")),
]


class ChatRoutesGuard:
    """The door to the mounted Gradio app: only the routes its own page uses get through.

    Gradio also serves a REST API (``/gradio_api/call``, ``/run``, ``/api``), uploads,
    file and proxy routes, and more; the chat needs none of them, so they answer 404
    here. A ``queue/join`` is checked first (its shape, an event of this chat, as many
    values as that event takes, its event data), so a malformed one is a 422, not a
    traceback inside Gradio. The JSON API under ``/api`` is
    the programmatic way in (with its key and limits).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        events: Mapping[int, ChatEvent],
        respond: Callable[[Request, int, str], Response],
    ) -> None:
        self.app = app
        self.events = dict(events)
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if not any(method in methods and pattern.match(path) for methods, pattern in _CHAT_ROUTES):
            await self.respond(Request(scope), 404, "Not found.")(scope, receive, send)
            return
        if path != "/gradio_api/queue/join":
            await self.app(scope, receive, send)
            return
        message = await receive()  # the whole body: RequestSizeMiddleware has read it
        problem = self._check(message.get("body", b""))
        if problem:
            await self.respond(Request(scope), 422, problem)(scope, receive, send)
            return
        sent = False

        async def replay() -> ASGIMessage:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return message

        await self.app(scope, replay, send)

    def _check(self, body: bytes) -> str | None:
        try:
            join = _QueueJoin.model_validate(json.loads(body))
        except (ValueError, ValidationError):
            return "Malformed chat event."
        event = self.events.get(join.fn_index)
        if event is None:
            return "Unknown chat event."
        if len(join.data) != event.inputs or (event.event_data and join.event_data is None):
            return "Malformed chat event."
        return None
