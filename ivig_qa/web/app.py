"""The HTTP server: the JSON/SSE API under ``/api``, the embed pages, and the Gradio chat at ``/``.

One process serves everything, so a portal needs one origin for the widget, the iframe
page and the API. The index is opened (and built when needed) in the background at
start-up: until it is ready ``/api/health`` answers 503 and questions are refused with
503 + ``Retry-After``, while the process already accepts connections for probes.

Privacy: question text is never logged unless the operator turns on ``log_questions``;
every response carries an ``X-Request-ID`` that also appears in the log lines.
"""

# No ``from __future__ import annotations`` here: the request models are built per app
# (their limits come from Settings) and FastAPI must see the real classes in signatures.

import gc
import hmac
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sse_starlette import EventSourceResponse, JSONServerSentEvent
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from ivig_qa import __version__
from ivig_qa.assistant import Assistant
from ivig_qa.feedback import FeedbackIn, FeedbackStore, Rating
from ivig_qa.index import UNAVAILABLE_ERRORS, IndexUnavailableError, is_unavailable
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Message, SourceDocument

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
NOT_READY_RETRY_S = 5
INDEX_PROBE_S = 1.0  # server mode: /api/health asks the Chroma server at most this often
WARM_UP_QUESTION = "What is IVIG?"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_request_id: ContextVar[str] = ContextVar("request_id", default="-")


# --- request ids and logging ----------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request can be matched to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


log.addFilter(RequestIdFilter())


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
    """Turns an unhandled exception into our JSON 500 (traceback to the log only).

    Starlette's own 500 handler re-raises after responding, which makes the server drop
    the connection; answering here keeps the client's connection and gives it the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            request = Request(scope)
            response = error_json(request, 500, "Something went wrong on our side; please try again.")
            await response(scope, receive, send)


# --- rate limiting ----------------------------------------------------------------------------
class TokenBucketLimiter:
    """Per-client token buckets: ``per_minute`` requests a minute, bursts up to the same.

    In-process on purpose: a single server needs nothing more, and several servers
    behind a load balancer are better limited at the balancer.
    """

    MAX_CLIENTS = 10_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until a token is free."""
        if self.capacity <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, updated = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_s)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                self._prune(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.refill_per_s

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled, so memory stays bounded."""
        if len(self._buckets) <= self.MAX_CLIENTS:
            return
        full_after = self.capacity / self.refill_per_s
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


def client_key(request: Request) -> str:
    """The client address (uvicorn resolves X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


# --- API models ---------------------------------------------------------------------------------
class FieldError(BaseModel):
    field: str = Field(description="Where in the request, e.g. `history[2].role`.")
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns, 4xx or 5xx: never a traceback."""

    error: str = Field(description="A stable code, e.g. `invalid_request`, `rate_limited`.")
    message: str = Field(description="A sentence a person can read.")
    request_id: str
    details: list[FieldError] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: Literal["ready", "loading", "error"]
    ready: bool
    documents: int = 0
    chunks: int = 0
    engine: str
    version: str = __version__
    index_version: str | None = None
    error: str | None = None


class ClientConfig(BaseModel):
    """What the widget needs before the first question (title, disclaimer, limits)."""

    title: str
    disclaimer: str
    examples: list[str]
    max_question_chars: int
    max_history_turns: int
    version: str = __version__


class SourcePassage(BaseModel):
    """A content block of the source; offsets point into the original file like citations."""

    start: int
    end: int
    heading: str
    text: str


class SourceView(BaseModel):
    doc_id: str
    title: str
    metadata: dict[str, Any]
    text: str = Field(description="The cleaned text (page furniture removed).")
    passages: list[SourcePassage]

    @classmethod
    def of(cls, doc: SourceDocument) -> "SourceView":
        passages = [
            SourcePassage(
                start=b.span.start,
                end=b.span.end,
                heading=b.heading,
                text=doc.text[b.span.start : b.span.end],
            )
            for b in doc.blocks
        ]
        return cls(
            doc_id=doc.doc_id,
            title=doc.title,
            metadata=doc.metadata,
            text=doc.cleaned_text(),
            passages=passages,
        )


class FeedbackAck(BaseModel):
    id: int
    answer_id: str
    rating: Rating
    question_stored: bool


def request_models(settings: Settings) -> type[BaseModel]:
    """The ask request schema with the operator's limits in it (and so in the OpenAPI docs)."""
    question_type = Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=settings.max_question_chars)
    ]
    content_type = Annotated[str, StringConstraints(max_length=settings.max_history_message_chars)]

    class HistoryTurn(BaseModel):
        """One earlier message of the conversation."""

        model_config = ConfigDict(extra="forbid")
        role: Literal["user", "assistant"]
        content: content_type  # type: ignore[valid-type]

    class AskRequest(BaseModel):
        """A question and the conversation so far (oldest first)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"question": "How often is IVIG given?", "history": []}]},
        )
        question: question_type  # type: ignore[valid-type]
        history: list[HistoryTurn] = Field(default_factory=list, max_length=settings.max_history_turns)

        def turns(self) -> list[Message]:
            return [Message(role=t.role, content=t.content) for t in self.history]

    return AskRequest


# --- state -----------------------------------------------------------------------------------------
@dataclass
class ServerState:
    """What the routes share; ``assistant`` stays ``None`` until the index is ready."""

    settings: Settings
    limiter: TokenBucketLimiter
    feedback: FeedbackStore
    assistant: Assistant | None = None
    sources: dict[str, SourceView] = field(default_factory=dict)
    error: str | None = None
    slots: anyio.CapacityLimiter | None = None
    index_down: str | None = None  # server mode: why the Chroma server cannot be used now
    index_checked_at: float = -math.inf

    def ready_assistant(self) -> Assistant:
        if self.assistant is None:
            raise HTTPException(
                503,
                self.error or "The assistant is starting (opening the index); please retry shortly.",
                headers={"Retry-After": str(NOT_READY_RETRY_S)},
            )
        return self.assistant


def get_state(request: Request) -> ServerState:
    return request.app.state.ivig


State = Annotated[ServerState, Depends(get_state)]
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Needed when configured.")


def require_api_key(state: State, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """When an API key is configured, ``X-API-Key`` must match it (constant-time compare)."""
    expected = state.settings.api_key
    if expected and not (key and hmac.compare_digest(key.encode(), expected.encode())):
        raise HTTPException(401, f"Missing or wrong {API_KEY_HEADER} header.")


def rate_limit(state: State, request: Request) -> None:
    """429 with ``Retry-After`` when this client has used up its questions for now."""
    wait = state.limiter.take(client_key(request))
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise HTTPException(
            429,
            f"Too many requests; please wait {seconds} s and try again.",
            headers={"Retry-After": str(seconds)},
        )


# --- start-up ---------------------------------------------------------------------------------------
def progress_logger(step_percent: int = 10) -> Callable[[int, int, str], None]:
    """A build progress callback that logs every ``step_percent`` % instead of every chunk."""
    last = [-step_percent]

    def report(done: int, total: int, doc: str) -> None:
        percent = int(100 * done / total) if total else 100
        if percent >= last[0] + step_percent or done == total:
            last[0] = percent
            log.info("building index: %d/%d chunks embedded (%d%%, %s)", done, total, percent, doc)

    return report


def default_loader(settings: Settings) -> Callable[[], Assistant]:
    """Open the index, building it first when it is missing or stale, with progress logged.

    On a Chroma server app servers only read: ``ivig-qa index`` (one job) is the single
    writer, so N servers starting together never race to build the same index; a server
    that finds none yet waits for it (``open_assistant`` retries).
    """

    def load() -> Assistant:
        return Assistant.load(
            settings,
            build=not settings.chroma_url,
            progress=progress_logger(),
            on_build=lambda s: log.info("index built: %d documents, %d chunks", s.documents, s.chunks),
        )

    return load


def load_sources(settings: Settings) -> dict[str, SourceView]:
    """The cleaned source texts for showing citations in context (none without a corpus copy)."""
    from ivig_qa.corpus import load_corpus

    if not settings.corpus_dir.is_dir():
        log.warning("no corpus folder at %s: /api/sources will answer 404", settings.corpus_dir)
        return {}
    return {doc.doc_id: SourceView.of(doc) for doc in load_corpus(settings.corpus_dir).documents}


async def open_assistant(state: ServerState, loader: Callable[[], Assistant]) -> None:
    """Open the index, load the sources and warm the models in worker threads, then go ready.

    A failure is logged and kept in ``state.error`` so ``/api/health`` can tell the operator.
    In server mode an unreachable Chroma server is retried every ``chroma_poll_s``, so app
    servers may start before it and become ready by themselves once it answers.
    """
    while True:
        try:
            await _open_once(state, loader)
            return
        except Exception as exc:  # the process keeps answering /api/health with the reason
            state.error = f"The index could not be opened: {exc}"
            if not (state.settings.chroma_url and is_unavailable(exc)):
                log.exception("start-up failed")
                return
            log.warning("%s; retrying in %.0f s", state.error, state.settings.chroma_poll_s)
            await anyio.sleep(state.settings.chroma_poll_s)


async def _open_once(state: ServerState, loader: Callable[[], Assistant]) -> None:
    log.info("opening the index (building it if needed)")
    assistant = await anyio.to_thread.run_sync(loader, abandon_on_cancel=True)
    state.sources = await anyio.to_thread.run_sync(load_sources, state.settings)
    # The first question loads the models; asking one now spares the first patient the wait.
    await anyio.to_thread.run_sync(assistant.ask, WARM_UP_QUESTION, abandon_on_cancel=True)
    state.assistant, state.error = assistant, None
    settle_memory()
    m = assistant.manifest
    log.info("ready: %d documents, %d chunks, index %s", len(m.documents), m.chunks, m.version)


def settle_memory() -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    torch, transformers, chromadb and gradio leave ~0.5 million long-lived objects; a full
    collection walks them all (~0.4 s on 2 cores) and stalls whichever request triggers
    it. Frozen objects are never scanned, so answers keep a steady latency. (After an index
    switch the previous assistant is unfrozen first so its cycles can still be freed.)
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def follow_index(state: ServerState) -> None:
    """Server mode: switch to a new index version once an indexer job has written one.

    Several app servers share one Chroma server; ``ivig-qa index`` run elsewhere writes a
    new version and keeps the old one until its next build, so each app server has that
    long to notice the new manifest here and swap in an assistant opened on it.
    """
    while True:
        await anyio.sleep(state.settings.chroma_poll_s)
        current = state.assistant
        if current is None:
            continue
        try:
            latest = await anyio.to_thread.run_sync(current.store.manifest, abandon_on_cancel=True)
            if latest is None or latest.version == current.manifest.version:
                continue
            log.info("index version %s → %s: reopening", current.manifest.version, latest.version)
            fresh = await anyio.to_thread.run_sync(
                lambda: Assistant.load(state.settings, build=False), abandon_on_cancel=True
            )
            await anyio.to_thread.run_sync(fresh.ask, WARM_UP_QUESTION, abandon_on_cancel=True)
            state.assistant = fresh
            settle_memory()
        except Exception as exc:  # a dead server or a half-written manifest: try again later
            log.warning("checking for a new index version failed: %s", exc)


async def index_down(state: ServerState) -> str | None:
    """Server mode: why the Chroma server cannot be used now (None when it answers).

    Probed at most once per ``INDEX_PROBE_S`` so load-balancer health checks do not add
    load; the probe has the short ``chroma_timeout_s``, so a hung server cannot hang it.
    """
    assistant = state.assistant
    if not state.settings.chroma_url or assistant is None:
        return None
    now = time.monotonic()
    if now - state.index_checked_at >= INDEX_PROBE_S:
        state.index_checked_at = now
        try:
            await anyio.to_thread.run_sync(assistant.store.ping)
            state.index_down = None
        except IndexUnavailableError as exc:
            state.index_down = str(exc)
    return state.index_down


# --- routes ------------------------------------------------------------------------------------------
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 422, 429, 500, 503)
}


def api_routes(settings: Settings) -> APIRouter:
    """Question answering, sources and feedback (API key and rate limit where they apply)."""
    ask_request = request_models(settings)
    router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

    async def answer_of(state: ServerState, body: Any) -> Answer:
        assistant = state.ready_assistant()
        log_question(state.settings, body.question)
        answer = await anyio.to_thread.run_sync(
            assistant.ask, body.question, body.turns(), limiter=state.slots
        )
        log_answer(answer)
        return answer

    @router.post(
        "/ask", response_model=Answer, dependencies=[Depends(rate_limit)], summary="Answer a question"
    )
    async def ask(state: State, body: ask_request) -> Answer:  # type: ignore[valid-type]
        """The full ``Answer`` (status, markdown with ``[n]`` markers, citations, disclaimer)."""
        return await answer_of(state, body)

    @router.post(
        "/ask/stream",
        dependencies=[Depends(rate_limit)],
        summary="Answer a question as server-sent events",
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "`delta` events, then `answer`."}
        },
    )
    async def ask_stream(state: State, body: ask_request, request: Request) -> EventSourceResponse:  # type: ignore[valid-type]
        """``event: delta`` with ``{"text": ...}`` pieces as they are produced, then one
        ``event: answer`` with the full ``Answer`` JSON (or ``event: error``)."""
        assistant = state.ready_assistant()
        log_question(state.settings, body.question)
        events = stream_events(assistant, body.question, body.turns(), state.slots, request_id_of(request))
        return EventSourceResponse(events, ping=15)

    @router.get("/sources/{doc_id}", response_model=SourceView, summary="A source's cleaned text")
    async def source(state: State, doc_id: str) -> SourceView:
        """Title, metadata and cleaned text of a source, to show a citation in context."""
        return source_or_404(state, doc_id)

    @router.post(
        "/feedback",
        response_model=FeedbackAck,
        status_code=201,
        dependencies=[Depends(rate_limit)],
        summary="Rate an answer",
    )
    async def feedback(state: State, body: FeedbackIn) -> FeedbackAck:
        """Thumbs up/down on an answer (by ``answer_id``), with an optional comment."""
        record = await anyio.to_thread.run_sync(state.feedback.add, body)
        return FeedbackAck(
            id=record.id,
            answer_id=record.answer_id,
            rating=record.rating,
            question_stored=record.question is not None,
        )

    return router


def public_routes() -> APIRouter:
    """Probes and the widget's start-up config: no API key, no rate limit."""
    router = APIRouter(prefix="/api")

    @router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(state: State) -> JSONResponse:
        """503 until the index is open and the assistant can answer (and while its server is down)."""
        return health_response(state, await index_down(state))

    @router.get("/config", response_model=ClientConfig)
    async def config(state: State) -> ClientConfig:
        s = state.settings
        return ClientConfig(
            title=s.app_title,
            disclaimer=DISCLAIMER,
            examples=s.example_questions,
            max_question_chars=s.max_question_chars,
            max_history_turns=s.max_history_turns,
        )

    return router


def api_fallback() -> APIRouter:
    """Unknown ``/api`` paths get our JSON 404/405 instead of falling through to the chat at ``/``."""
    router = APIRouter(include_in_schema=False)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]

    @router.api_route("/api/{path:path}", methods=methods)
    async def no_such_endpoint(request: Request, path: str) -> None:
        partial = [r for r in request.app.router.routes if r.matches(request.scope)[0] == Match.PARTIAL]
        if partial:  # the path exists, with other methods
            raise HTTPException(405, f"/api/{path} does not accept {request.method}.")
        raise HTTPException(404, f"There is no API endpoint /api/{path}.")

    return router


def health_response(state: ServerState, down: str | None = None) -> JSONResponse:
    engine = state.settings.engine
    if state.assistant is None or down:
        error = f"The index server is unreachable: {down}" if down else state.error
        status = "error" if error else "loading"
        body = HealthResponse(status=status, ready=False, engine=engine, error=error)
        return JSONResponse(
            body.model_dump(), status_code=503, headers={"Retry-After": str(NOT_READY_RETRY_S)}
        )
    m = state.assistant.manifest
    body = HealthResponse(
        status="ready",
        ready=True,
        documents=len(m.documents),
        chunks=m.chunks,
        engine=state.assistant.engine.name,
        index_version=m.version,
    )
    return JSONResponse(body.model_dump())


def source_or_404(state: ServerState, doc_id: str) -> SourceView:
    view = state.sources.get(doc_id)
    if view is None:
        raise HTTPException(404, f"No source with id {doc_id!r}.")
    return view


def log_question(settings: Settings, question: str) -> None:
    """The question text only when the operator opted in; otherwise only its length."""
    if settings.log_questions:
        log.info("question: %r", question)
    else:
        log.info("question received (%d chars)", len(question))


def log_answer(answer: Answer) -> None:
    log.info(
        "answer %s status=%s citations=%d total_ms=%s",
        answer.answer_id,
        answer.status.value,
        len(answer.citations),
        answer.timings_ms.get("total"),
    )


_DONE = object()


async def stream_events(
    assistant: Assistant,
    question: str,
    history: list[Message],
    slots: anyio.CapacityLimiter | None,
    request_id: str,
) -> AsyncIterator[JSONServerSentEvent]:
    """Pull ``Assistant.stream`` in worker threads; text pieces as ``delta``, then ``answer``."""
    pieces: Iterator[str | Answer] = assistant.stream(question, history)
    try:
        while (item := await anyio.to_thread.run_sync(next, pieces, _DONE, limiter=slots)) is not _DONE:
            if isinstance(item, Answer):
                log_answer(item)
                yield JSONServerSentEvent(item.to_dict(), event="answer")
            else:
                yield JSONServerSentEvent({"text": item}, event="delta")
    except Exception as exc:
        unavailable = is_unavailable(exc)
        log.log(
            logging.WARNING if unavailable else logging.ERROR, "streaming failed", exc_info=not unavailable
        )
        error = ErrorResponse(
            error="index_unavailable" if unavailable else "internal_error",
            message=INDEX_UNAVAILABLE if unavailable else "Something went wrong while answering.",
            request_id=request_id,
        )
        yield JSONServerSentEvent(error.model_dump(), event="error")


def page_routes(templates: Jinja2Templates) -> APIRouter:
    """The widget script, the iframe page, the demo portal and the source-in-context page."""
    router = APIRouter(include_in_schema=False)

    @router.get("/widget.js", name="widget_js")
    async def widget_js() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "widget.js",
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    @router.get("/embed", name="embed", response_class=HTMLResponse)
    async def embed(request: Request, state: State) -> Response:
        context = {"title": state.settings.app_title}
        return page(templates, request, "embed.html", context, embeddable_by=state.settings.cors_origins)

    @router.get("/demo", name="demo", response_class=HTMLResponse)
    async def demo(request: Request, state: State) -> Response:
        return page(templates, request, "demo.html", {"title": state.settings.app_title})

    @router.get("/sources/{doc_id}", name="source_page", response_class=HTMLResponse)
    async def source_page(
        request: Request,
        state: State,
        doc_id: str,
        start: Annotated[int | None, Query(ge=0)] = None,
        end: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        view = source_or_404(state, doc_id)
        context = {
            "view": view,
            "paragraphs": highlighted(view, start, end),
            "details": source_details(view.metadata),
            "disclaimer": DISCLAIMER,
        }
        return page(templates, request, "source.html", context, scripts=False)

    return router


@dataclass(frozen=True)
class Paragraph:
    """One block of a source page, split around the highlighted citation span."""

    heading: str | None
    before: str
    mark: str
    after: str
    anchor: bool


def highlighted(view: SourceView, start: int | None, end: int | None) -> list[Paragraph]:
    """The source's blocks with the ``[start, end)`` span (original-file offsets) marked."""
    paragraphs: list[Paragraph] = []
    heading = ""
    anchored = False
    for p in view.passages:
        lo = max(start or 0, p.start) - p.start
        hi = min(end or 0, p.end) - p.start
        marked = start is not None and end is not None and lo < hi
        if not marked:
            lo = hi = len(p.text)
        paragraphs.append(
            Paragraph(
                heading=p.heading if p.heading and p.heading != heading else None,
                before=p.text[:lo],
                mark=p.text[lo:hi],
                after=p.text[hi:],
                anchor=marked and not anchored,
            )
        )
        anchored = anchored or marked
        heading = p.heading
    return paragraphs


def source_details(metadata: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, text, link) rows for the source page; only http(s) URLs become links."""
    rows: list[tuple[str, str, str | None]] = []
    for key in ("publisher", "kind", "doi", "url"):
        value = metadata.get(key)
        if value:
            text = str(value)
            link = text if key == "url" and re.match(r"^https?://", text) else None
            rows.append((key.capitalize() if key != "doi" else "DOI", text, link))
    return rows


def page(
    templates: Jinja2Templates,
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    scripts: bool = True,
    embeddable_by: list[str] | None = None,
) -> Response:
    """An HTML page with a strict content security policy (no inline or third-party scripts)."""
    ancestors = " ".join(["'self'", *(embeddable_by or [])])
    script_src = "'self'" if scripts else "'none'"
    csp = (
        f"default-src 'self'; script-src {script_src}; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    response = templates.TemplateResponse(request, name, context)
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


INDEX_UNAVAILABLE = "The answer index is unreachable right now; please try again shortly."


# --- errors --------------------------------------------------------------------------------------------
def error_json(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
    code = {422: "invalid_request", 429: "rate_limited", 503: "not_ready"}.get(status)
    code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    body = ErrorResponse(error=code, message=message, request_id=request_id_of(request), **extra)
    return JSONResponse(body.model_dump(), status_code=status)


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


# --- the app -------------------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    *,
    assistant: Assistant | None = None,
    loader: Callable[[], Assistant] | None = None,
    chat: "gr.Blocks | None" = None,
) -> FastAPI:
    """The whole server as one ASGI app.

    Pass ``assistant`` to serve an already open index; otherwise ``loader`` (default:
    open or build the index from ``settings``) runs in the background at start-up.
    ``chat`` is a chat app built by the caller (``ui.py``); by default one is built here.
    """
    settings = settings or Settings()
    state = ServerState(
        settings=settings,
        limiter=TokenBucketLimiter(settings.rate_limit_per_minute),
        feedback=FeedbackStore(settings.feedback_db, store_questions=settings.log_questions),
    )
    load = (lambda: assistant) if assistant is not None else (loader or default_loader(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.slots = anyio.CapacityLimiter(settings.max_concurrent_answers)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(open_assistant, state, load)
            if settings.chroma_url:
                tasks.start_soon(follow_index, state)
            yield
            tasks.cancel_scope.cancel()
        state.feedback.close()

    app = FastAPI(
        title="ivig-qa",
        version=__version__,
        description="Answers questions about IVIG only from curated sources, with citations.",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ivig = state
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", API_KEY_HEADER, REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(CrashGuardMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(public_routes())
    app.include_router(api_routes(settings))
    app.include_router(api_fallback())
    app.include_router(page_routes(Jinja2Templates(directory=STATIC_DIR)))
    if settings.chat_ui or chat is not None:
        from ivig_qa.web.chat import build_chat_app, mount_chat

        blocks = chat or build_chat_app(
            lambda: state.assistant, settings, limiter=state.limiter, feedback=state.feedback
        )
        mount_chat(app, blocks)
    return app


def uvicorn_config(
    app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """Our logging (with request ids) instead of uvicorn's, and proxy headers as configured."""
    extra: dict[str, Any] = {}
    if settings.forwarded_allow_ips:
        extra["forwarded_allow_ips"] = settings.forwarded_allow_ips
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **extra,
    )


def serve(settings: Settings, *, assistant: Assistant | None = None, chat: "gr.Blocks | None" = None) -> None:
    """Run the server in the foreground (``ivig-qa serve``, ``python ui.py``)."""
    app = create_app(settings, assistant=assistant, chat=chat)
    log.info("serving on http://%s:%d (chat at /, API docs at /api/docs)", settings.host, settings.port)
    uvicorn.Server(uvicorn_config(app, settings)).run()
