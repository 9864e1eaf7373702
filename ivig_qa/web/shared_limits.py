"""Rate limits shared by every app server through Redis (``rate_limit_url``), and the choice of limiter.

One atomic Lua token bucket per client in Redis, on Redis's own clock, so a client gets the
same ``rate_limit_per_minute`` whichever app server the load balancer sends it to. When Redis
does not answer, the server falls back to its in-process buckets (never failing a request
because of the limiter), says so in ``/api/health``, and tries Redis again every
``RETRY_S`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ivig_qa.settings import Settings, redacted_url
from ivig_qa.web.limits import Limiter, TokenBucketLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "ivig_qa:rate:"
TIMEOUT_S = 0.5  # a Redis call slower than this counts as Redis being down
RETRY_S = 5.0  # while Redis is down, how often a request tries it again

# KEYS[1]: the client's bucket; ARGV: capacity, tokens per second. Returns the wait in seconds
# (as a string: Lua numbers become integers in Redis replies). TIME is Redis's clock, the same
# for every app server; the bucket expires once it would be full again.
TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or capacity
local ts = tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return tostring(wait)
"""


class RedisTokenBucketLimiter:
    """``per_minute`` requests a minute per client across all servers; local buckets while Redis is down."""

    def __init__(self, url: str, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        import redis  # only when configured

        self.url = url
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.local = TokenBucketLimiter(per_minute, clock)
        self.clock = clock
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, decode_responses=True
        )
        self._script: Any = self._client.register_script(TOKEN_BUCKET)
        self._lock = threading.Lock()
        self.error: str | None = None
        self._retry_at = 0.0

    def take(self, client: str) -> float:
        if self.capacity <= 0:
            return 0.0
        if self.error is not None and self.clock() < self._retry_at:
            return self.local.take(client)
        try:
            wait = float(self._script(keys=[KEY_PREFIX + client], args=[self.capacity, self.refill_per_s]))
        except self._errors as exc:
            self._down(exc)
            return self.local.take(client)
        if self.error is not None:
            with self._lock:
                self.error = None
            log.info("Redis at %s answers again: rate limits are shared again", redacted_url(self.url))
        return wait

    def _down(self, exc: BaseException) -> None:
        where = redacted_url(self.url)
        with self._lock:
            first = self.error is None
            self.error = f"Redis at {where} is unreachable ({type(exc).__name__}); limits are per server"
            self._retry_at = self.clock() + RETRY_S
        if first:
            log.warning("%s: %s", self.error, exc)

    def health(self) -> dict[str, object]:
        return {"backend": "redis", "shared": self.error is None, "error": self.error}

    def close(self) -> None:
        self._client.close()


def make_limiter(settings: Settings) -> Limiter:
    """Redis buckets when ``rate_limit_url`` is set, else this process's own buckets (the default)."""
    per_minute = settings.server.rate_limit_per_minute
    if settings.server.rate_limit_url:
        return RedisTokenBucketLimiter(settings.server.rate_limit_url, per_minute)
    return TokenBucketLimiter(per_minute)
