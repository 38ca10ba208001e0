"""Per-key token buckets for reads and writes (WIRE.md §1), as a DRF throttle.

Buckets live in each web process's memory: with N gunicorn workers a key may use up to N
times the configured rate in the worst case. That keeps the hot path free of shared-state
round trips; docs/OPERATIONS.md explains how to size the limits.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.throttling import BaseThrottle

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_BUCKETS = 100_000


class TokenBuckets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, key: tuple[str, str], rate: float, burst: float) -> float:
        """Take one token; returns 0 if allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - stamp) * rate)
            if tokens >= 1.0:
                if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
                    self._buckets.clear()
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate if rate > 0 else 60.0

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


buckets = TokenBuckets()


class KeyRateThrottle(BaseThrottle):
    def allow_request(self, request: Request, view: APIView) -> bool:
        caller = request.user
        identity = str(caller.key_id or caller.entity_uri) if caller is not None else "unauthenticated"
        if request.method in _READ_METHODS:
            kind, rate, burst = "read", settings.STIGMEM_RATE_LIMIT_READ_PER_S, settings.STIGMEM_RATE_LIMIT_READ_BURST
        else:
            kind, rate, burst = (
                "write",
                settings.STIGMEM_RATE_LIMIT_WRITE_PER_S,
                settings.STIGMEM_RATE_LIMIT_WRITE_BURST,
            )
        self._wait = buckets.take((identity, kind), rate, burst)
        return self._wait == 0.0

    def wait(self) -> float:
        return float(max(1, math.ceil(self._wait)))
