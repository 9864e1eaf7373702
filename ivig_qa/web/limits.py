"""Limits on what a client may cost: rate (token buckets), request size, read time, answer slots."""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import h11
from fastapi import Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage
from uvicorn.protocols.http.h11_impl import H11Protocol

from ivig_qa.settings import Settings


class Limiter(Protocol):
    """What the API and the chat ask of a rate limiter."""

    def take(self, client: str) -> float:
        """0.0 when ``client`` may go ahead, else the seconds until it may."""
        ...

    def health(self) -> dict[str, object]:
        """What ``/api/health`` says about the limits: ``backend``, ``shared``, ``error``."""
        ...


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

    def health(self) -> dict[str, object]:
        return {"backend": "local", "shared": False, "error": None}

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled, so memory stays bounded."""
        if len(self._buckets) <= self.MAX_CLIENTS:
            return
        full_after = self.capacity / self.refill_per_s
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


def client_key(request: Request) -> str:
    """The client address: the peer, or the X-Forwarded-For client when the peer is a trusted
    proxy (``forwarded_allow_ips``; uvicorn resolves it, and trusts nobody by default)."""
    return request.client.host if request.client else "unknown"


def answer_slots(settings: Settings) -> anyio.CapacityLimiter:
    """Worker threads answering at once, across all requests (made inside the event loop)."""
    return anyio.CapacityLimiter(settings.server.max_concurrent_answers)


class RequestSizeMiddleware:
    """Caps what one request may carry, before anything parses or checks it.

    Headers (with the request line) over ``max_header_bytes``: ``headers_too_large``
    (431). uvicorn's h11 caps headers that arrive in pieces; this also catches a header
    block that arrived in one read. The body is read here, at most ``max_body_bytes``; a
    larger one gets ``body_too_large`` (413): at once when its ``Content-Length`` says so,
    or as soon as a chunked body passes the cap; the server discards the rest unread.
    Memory per request is bounded by the caps, whatever is sent.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        body_too_large: Callable[[Request], Response],
        headers_too_large: Callable[[Request], Response],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.body_too_large = body_too_large
        self.headers_too_large = headers_too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        header_bytes += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            await self.headers_too_large(Request(scope))(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        if length is not None and int(length) > self.max_body_bytes:  # h11 has checked it is a number
            await self.body_too_large(Request(scope))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self.body_too_large(Request(scope))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[ASGIMessage]]:
    """A ``receive`` that gives the whole body once, then waits on the real one (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> ASGIMessage:
        return pending.pop() if pending else await receive()

    return replayed


def guarded_h11(read_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on receiving each request.

    From the moment a connection opens, or a kept-alive one starts its next request, the
    request line, the headers and the body must all arrive within ``read_timeout_s``;
    a client that sends nothing, or trickles (slowloris), is disconnected. Responses,
    however long they stream, are not limited.
    """

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _receiving(self) -> bool:
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()

        def _watch(self) -> None:
            if not self._receiving():
                self._cancel()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(read_timeout_s, self._expire)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self._receiving():
                self.logger.info(
                    "closed a connection: its request did not arrive within %.0f s", read_timeout_s
                )
                self.transport.close()

    return GuardedH11Protocol
