"""Prometheus metrics at ``/metrics`` (``settings.server.metrics``): requests, answers, refusals, index.

One registry per app (several apps can live in one process: tests, the bench). Labels are
bounded and never carry question text: routes are templates (``/api/sources/{doc_id}``,
never the raw path), statuses and engines are the few the code defines, an LLM fallback's
reason is its kind (``timeout``, ``error``…). The index version, documents and chunks are
read from the live assistant at scrape time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from ivig_qa.web.middleware import route_template

if TYPE_CHECKING:
    from ivig_qa.assistant import Assistant
    from ivig_qa.types import Answer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_FALLBACK = re.compile(r"^extractive \(llm (fallback|skipped): ([a-z ]+?)(?: \(.*\))?\)$")


def engine_kind(engine: str) -> tuple[str, str | None]:
    """``("llm" | "extractive", fallback reason or None)`` from an answer's engine label.

    ``"llm:qwen…"`` → ``("llm", None)``; ``"extractive (llm fallback: error (ConnectionError))"``
    → ``("extractive", "error")``; a skipped model (``llm skipped: …``) is not a fallback.
    """
    if engine.startswith("llm"):
        return "llm", None
    m = _FALLBACK.match(engine)
    if m and m.group(1) == "fallback":
        return "extractive", m.group(2)
    return "extractive", None


class Metrics:
    """The app's metrics and the registry ``/metrics`` renders."""

    def __init__(self, assistant: Callable[[], Assistant | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ivig_qa_http_requests", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ivig_qa_http_request_duration_seconds", "Time to the end of the response, streams included.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.answers = Counter(
            "ivig_qa_answers", "Answers given (API and chat) by status, engine and index version.",
            ["status", "engine", "index_version"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "ivig_qa_llm_fallbacks", "LLM answers replaced by the extractive engine, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "ivig_qa_rate_limit_refusals", "Requests refused by the rate limit (API and chat).", registry=r
        )
        self.ratings = Counter(
            "ivig_qa_feedback_ratings", "Ratings stored through the API, by rating.", ["rating"], registry=r
        )
        r.register(IndexCollector(assistant))

    def answered(self, answer: Answer, index_version: str | None) -> None:
        engine, fallback = engine_kind(answer.engine)
        self.answers.labels(answer.status.value, engine, index_version or "none").inc()
        if fallback:
            self.fallbacks.labels(fallback).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class IndexCollector(Collector):
    """The open index, read at scrape time: ready, version (as info), documents and chunks."""

    def __init__(self, assistant: Callable[[], Assistant | None]) -> None:
        self.assistant = assistant

    def collect(self) -> Iterator[Any]:
        current = self.assistant()
        ready = 0 if current is None else 1
        yield GaugeMetricFamily("ivig_qa_ready", "1 once the index is open and answering.", ready)
        if current is None:
            return
        m = current.manifest
        info = InfoMetricFamily("ivig_qa_index", "The index version being served.")
        info.add_metric([], {"version": m.version, "engine": current.engine.name})
        yield info
        yield GaugeMetricFamily("ivig_qa_index_documents", "Documents in the served index.", len(m.documents))
        yield GaugeMetricFamily("ivig_qa_index_chunks", "Chunks in the served index.", m.chunks)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (measured to the last byte)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe(scope["method"], route_template(scope), status, seconds)


class MeteredLimiter:
    """A rate limiter that counts its refusals (the API and the chat share it)."""

    def __init__(self, limiter: Any, metrics: Metrics) -> None:
        self.limiter = limiter
        self.metrics = metrics

    def take(self, client: str) -> float:
        wait = self.limiter.take(client)
        if wait > 0:
            self.metrics.refusals.inc()
        return wait

    def health(self) -> dict[str, object]:
        return self.limiter.health()

    def __getattr__(self, name: str) -> Any:  # close() and the rest of the limiter's interface
        return getattr(self.limiter, name)


def metrics_routes() -> APIRouter:
    """``GET /metrics`` in the Prometheus text format (``ApiKeyMiddleware`` guards it when a key is set)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        registry: Metrics = request.app.state.ivig.metrics
        return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)

    return router
