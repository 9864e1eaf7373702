"""The server's life: its shared state, opening the index at start-up, following new versions, closing.

On shutdown (SIGTERM) uvicorn stops accepting and gives in-flight answers and streams
``shutdown_grace_s`` to finish; then the lifespan below stops its background tasks and
closes the feedback store.
"""

import gc
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request

from ivig_qa.assistant import Assistant
from ivig_qa.feedback import FeedbackRecord, FeedbackStore, open_store
from ivig_qa.index import IndexUnavailableError, is_unavailable
from ivig_qa.settings import Settings
from ivig_qa.types import Answer
from ivig_qa.web.errors import NOT_READY_RETRY_S
from ivig_qa.web.limits import Limiter, answer_slots
from ivig_qa.web.metrics import MeteredLimiter, Metrics
from ivig_qa.web.middleware import note_request, request_logger
from ivig_qa.web.schemas import SourceView
from ivig_qa.web.shared_limits import make_limiter

log = request_logger(__name__)

INDEX_PROBE_S = 1.0  # server mode: /api/health asks the Chroma server at most this often
WARM_UP_QUESTION = "What is IVIG?"


@dataclass
class ServerState:
    """What the routes and the chat share; ``assistant`` stays ``None`` until the index is ready."""

    settings: Settings
    limiter: Limiter
    feedback: FeedbackStore
    metrics: Metrics | None = None
    assistant: Assistant | None = None
    sources: dict[str, SourceView] = field(default_factory=dict)
    error: str | None = None
    slots: anyio.CapacityLimiter | None = None
    index_down: str | None = None  # server mode: why the Chroma server cannot be used now
    index_checked_at: float = -math.inf

    @classmethod
    def of(cls, settings: Settings) -> "ServerState":
        """A fresh state: one rate limiter, one feedback store and (when on) one metrics registry."""
        limiter = make_limiter(settings)
        state = cls(settings=settings, limiter=limiter, feedback=open_store(settings))
        if settings.server.metrics:
            state.metrics = Metrics(lambda: state.assistant)
            state.limiter = MeteredLimiter(limiter, state.metrics)
        return state

    def answered(self, answer: Answer, assistant: Assistant | None = None) -> None:
        """The hook every answer sent (API or chat) passes: facts kept for its rating, metrics, log."""
        served = assistant or self.assistant
        version = served.manifest.version if served is not None else None
        self.feedback.issued.record(answer, version)
        if self.metrics is not None:
            self.metrics.answered(answer, version)
        note_request(answer_status=answer.status.value, answer_id=answer.answer_id, engine=answer.engine)

    def rated(self, record: FeedbackRecord) -> None:
        if self.metrics is not None:
            self.metrics.ratings.labels(record.rating).inc()

    def ready_assistant(self) -> Assistant:
        if self.assistant is None:
            raise HTTPException(
                503,
                self.error or "The assistant is starting (opening the index); please retry shortly.",
                headers={"Retry-After": str(NOT_READY_RETRY_S)},
            )
        return self.assistant

    def source(self, doc_id: str) -> SourceView:
        view = self.sources.get(doc_id)
        if view is None:
            raise HTTPException(404, f"No source with id {doc_id!r}.")
        return view


def get_state(request: Request) -> ServerState:
    return request.app.state.ivig


State = Annotated[ServerState, Depends(get_state)]


def lifespan(
    state: ServerState, loader: Callable[[], Assistant]
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the assistant (and in server mode follow the index) while the app runs."""

    @asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[None]:
        state.slots = answer_slots(state.settings)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(open_assistant, state, loader)
            tasks.start_soon(purge_feedback, state)
            if state.settings.index.chroma_url:
                tasks.start_soon(follow_index, state)
            yield
            log.info("shutting down: stopping background tasks")
            tasks.cancel_scope.cancel()
        await anyio.to_thread.run_sync(state.feedback.close)
        log.info("feedback store closed (%s)", state.feedback.location)
        close = getattr(state.limiter, "close", None)
        if callable(close):
            close()

    return run


async def purge_feedback(state: ServerState) -> None:
    """On start: delete ratings older than ``feedback_retention_days`` (a failure is only logged)."""
    days = state.settings.server.feedback_retention_days
    if days is None:
        return
    try:
        removed = await anyio.to_thread.run_sync(state.feedback.purge, days, abandon_on_cancel=True)
    except Exception as exc:  # a database that is down now: the next start purges
        log.warning("could not purge old feedback: %s", exc)
        return
    if removed:
        log.info("purged %d rating(s) older than %g days", removed, days)


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
            build=not settings.index.chroma_url,
            progress=progress_logger(),
            on_build=lambda s: log.info("index built: %d documents, %d chunks", s.documents, s.chunks),
        )

    return load


def load_sources(settings: Settings) -> dict[str, SourceView]:
    """The cleaned source texts for showing citations in context (none without a corpus copy)."""
    from ivig_qa.corpus import load_corpus

    if not settings.index.corpus_dir.is_dir():
        log.warning("no corpus folder at %s: /api/sources will answer 404", settings.index.corpus_dir)
        return {}
    return {doc.doc_id: SourceView.of(doc) for doc in load_corpus(settings.index.corpus_dir).documents}


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
            if not (state.settings.index.chroma_url and is_unavailable(exc)):
                log.exception("start-up failed")
                return
            log.warning("%s; retrying in %.0f s", state.error, state.settings.index.chroma_poll_s)
            await anyio.sleep(state.settings.index.chroma_poll_s)


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
        await anyio.sleep(state.settings.index.chroma_poll_s)
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
    if not state.settings.index.chroma_url or assistant is None:
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
