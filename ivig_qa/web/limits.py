"""Rate and concurrency limits: per-client token buckets, the client key, answer slots."""

import threading
import time
from collections.abc import Callable
from typing import Protocol

import anyio
from fastapi import Request

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
    """The client address (uvicorn resolves X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


def answer_slots(settings: Settings) -> anyio.CapacityLimiter:
    """Worker threads answering at once, across all requests (made inside the event loop)."""
    return anyio.CapacityLimiter(settings.server.max_concurrent_answers)
