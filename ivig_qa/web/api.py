"""The JSON API under ``/api``: answers (whole or as server-sent events), sources, feedback, probes.

Every route but the probes (``PUBLIC_PATHS``) needs the API key when one is configured;
``ApiKeyMiddleware`` checks it before a body is read. Answer ids are handed out signed, and
feedback is taken only for a signed id.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real classes in signatures.

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from sse_starlette import EventSourceResponse, JSONServerSentEvent
from starlette.routing import Match

from ivig_qa.assistant import Assistant
from ivig_qa.engines.base import Lead
from ivig_qa.feedback import AnswerIds, FeedbackIn
from ivig_qa.index import is_unavailable
from ivig_qa.policy.input import InvalidQuestion
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Message
from ivig_qa.web.errors import INDEX_UNAVAILABLE, NOT_READY_RETRY_S
from ivig_qa.web.lifecycle import ServerState, State, index_down
from ivig_qa.web.limits import client_key
from ivig_qa.web.middleware import request_id_of, request_logger
from ivig_qa.web.schemas import (
    ClientConfig,
    ErrorResponse,
    FeedbackAck,
    HealthResponse,
    SourceView,
    request_models,
)

log = request_logger(__name__)

API_KEY_HEADER = "X-API-Key"
PUBLIC_PATHS = ("/api/health", "/api/config", "/api/openapi.json", "/api/docs")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 500, 503)
}
# Documents the key in OpenAPI; ApiKeyMiddleware enforces it, before any body is read.
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Needed when configured.")


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


def api_routes(settings: Settings) -> APIRouter:
    """Question answering, sources and feedback (API key and rate limit where they apply)."""
    ask_request = request_models(settings)
    answer_ids = AnswerIds(
        settings.server.answer_id_secret.get_secret_value() if settings.server.answer_id_secret else None
    )
    router = APIRouter(prefix="/api", dependencies=[Depends(_api_key_header)], responses=ERROR_RESPONSES)

    async def answer_of(state: ServerState, body: Any) -> Answer:
        question, turns = body.checked()
        assistant = state.ready_assistant()
        log_question(state.settings, question)
        answer = await anyio.to_thread.run_sync(assistant.ask, question, turns, limiter=state.slots)
        answer = signed(answer, answer_ids)  # the id the client sees is the id of record everywhere
        state.answered(answer, assistant)
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
            200: {
                "content": {"text/event-stream": {}},
                "description": "`delta` events (and, from the LLM engine, one `lead` event: deltas after "
                "it go above it), then `answer`.",
            }
        },
    )
    async def ask_stream(state: State, body: ask_request, request: Request) -> EventSourceResponse:  # type: ignore[valid-type]
        """``event: delta`` with ``{"text": ...}`` pieces as they are produced, then one
        ``event: answer`` with the full ``Answer`` JSON (or ``event: error``).

        The LLM engine sends its quotes first as one ``event: lead`` (``{"text": ...}``), shown at
        once below the deltas so far; the deltas after it are the summary being written, shown
        above the lead (the answer reads: deltas before, deltas after, a blank line, the lead).
        The ``answer`` event is authoritative: it replaces everything streamed."""
        question, turns = body.checked()
        assistant = state.ready_assistant()
        log_question(state.settings, question)
        events = stream_events(
            assistant,
            question,
            turns,
            state.slots,
            request_id_of(request),
            answer_ids,
            on_answer=lambda answer: state.answered(answer, assistant),
        )
        # On SIGTERM a stream in flight gets the grace period to finish (not cut at once).
        return EventSourceResponse(
            events, ping=15, shutdown_grace_period=state.settings.server.shutdown_grace_s
        )

    @router.get("/sources/{doc_id}", response_model=SourceView, summary="A source's cleaned text")
    async def source(state: State, doc_id: str) -> SourceView:
        """Title, metadata and cleaned text of a source, to show a citation in context."""
        return state.source(doc_id)

    @router.post(
        "/feedback",
        response_model=FeedbackAck,
        status_code=201,
        dependencies=[Depends(rate_limit)],
        summary="Rate an answer",
    )
    async def feedback(state: State, body: FeedbackIn) -> FeedbackAck:
        """Thumbs up/down on an answer (its ``answer_id`` as this server gave it), with an
        optional comment; 503 with ``Retry-After`` while the feedback database is unavailable."""
        if answer_ids.verify(body.answer_id) is None:
            raise InvalidQuestion("This is not the id of an answer this service gave.", field="answer_id")
        record = await anyio.to_thread.run_sync(state.feedback.add, body)  # 503 when unavailable
        state.rated(record)
        return FeedbackAck(
            id=record.id,
            answer_id=body.answer_id,
            rating=record.rating,
            question_stored=record.question is not None,
        )

    return router


def public_routes() -> APIRouter:
    """Probes and the widget's start-up config: no API key, no rate limit."""
    router = APIRouter(prefix="/api")

    @router.head("/health", include_in_schema=False)
    @router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(state: State) -> JSONResponse:
        """503 until the index is open and the assistant can answer (and while its server is down)."""
        return health_response(state, await index_down(state))

    @router.get("/config", response_model=ClientConfig)
    async def config(state: State) -> ClientConfig:
        s = state.settings
        return ClientConfig(
            title=s.server.app_title,
            disclaimer=DISCLAIMER,
            examples=s.server.example_questions,
            max_question_chars=s.policy.max_question_chars,
            max_history_turns=s.policy.max_history_turns,
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
    engine = state.settings.answer.engine
    if state.assistant is None or down:
        error = f"The index server is unreachable: {down}" if down else state.error
        status = "error" if error else "loading"
        body = HealthResponse(
            status=status, ready=False, engine=engine, error=error, rate_limit=state.limiter.health()
        )
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
        problems=m.problems,
        warnings=m.warnings,
        rate_limit=state.limiter.health(),
    )
    return JSONResponse(body.model_dump())


def signed(answer: Answer, answer_ids: AnswerIds) -> Answer:
    """The answer with the id clients see: signed, so feedback can name only given answers."""
    return answer.model_copy(update={"answer_id": answer_ids.sign(answer.answer_id)})


def log_question(settings: Settings, question: str) -> None:
    """The question text only when the operator opted in (``log_questions``); otherwise its length."""
    if settings.server.log_questions:
        log.info("question: %r", question)  # repr: control characters escaped
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
    answer_ids: AnswerIds,
    on_answer: Callable[[Answer], None] | None = None,
) -> AsyncIterator[JSONServerSentEvent]:
    """Pull ``Assistant.stream`` in worker threads; text pieces as ``delta`` (a ``Lead`` as
    ``lead``), then ``answer``."""
    pieces: Iterator[str | Answer] = assistant.stream(question, history)
    try:
        while (item := await anyio.to_thread.run_sync(next, pieces, _DONE, limiter=slots)) is not _DONE:
            if isinstance(item, Answer):
                item = signed(item, answer_ids)
                if on_answer is not None:
                    on_answer(item)
                log_answer(item)
                yield JSONServerSentEvent(item.to_dict(), event="answer")
            else:
                kind = "lead" if isinstance(item, Lead) else "delta"
                yield JSONServerSentEvent({"text": str(item)}, event=kind)
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
