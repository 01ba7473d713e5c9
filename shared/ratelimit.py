"""Per-user rate limits for endpoints worth brute-forcing (code entry, group joins): 429 with
Retry-After. The window lives in the process: with N replicas behind a load balancer a user gets
at most N times the limit, which still makes enumerating codes impractical; a shared limiter
belongs in the API gateway (see SECURITY.md)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from shared.auth import Principal, authenticate
from shared.errors import ApiError


class SlidingWindowLimiter:
    def __init__(self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> float | None:
        """Record a hit; None if allowed, else the seconds until the next hit would be."""
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._evict(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.0, hits[0] + self.window - now)
        hits.append(now)
        return None

    def _evict(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]


def _enforce(limiter: SlidingWindowLimiter, name: str, principal: Principal) -> Principal:
    wait = limiter.check(f"{name}:{principal.user_id}")
    if wait is not None:
        retry_after = max(1, math.ceil(wait))
        raise ApiError(429, "rate_limited", f"too many {name} requests; retry in {retry_after}s",
                       {"retry_after_seconds": retry_after}, headers={"Retry-After": str(retry_after)})
    return principal


def rate_limited(name: str, limit: int, window_seconds: float = 60.0) -> Any:
    """A dependency: the authenticated caller may call this at most ``limit`` times per window."""
    limiter = SlidingWindowLimiter(limit, window_seconds)

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return _enforce(limiter, name, principal)

    dependency.limiter = limiter  # type: ignore[attr-defined]  # tests reach the window
    return Depends(dependency)


def rate_limited_by_setting(name: str, setting: str, window_seconds: float = 60.0) -> Any:
    """Like ``rate_limited``, with the limit read from the service's settings field ``setting``
    (env-configurable) and one window per app, so routers defined at import time get the limit
    of the settings the app was built with, and apps built side by side (tests) share nothing.
    Limiters with the same ``name`` share one window (e.g. opening and joining groups)."""

    def dependency(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        state = request.app.state
        limiters: dict[str, SlidingWindowLimiter] | None = getattr(state, "rate_limiters", None)
        if limiters is None:
            limiters = state.rate_limiters = {}
        limiter = limiters.get(name)
        if limiter is None:
            limit = int(getattr(state.runtime.settings, setting))
            limiter = limiters[name] = SlidingWindowLimiter(limit, window_seconds)
        return _enforce(limiter, name, principal)

    return Depends(dependency)
