"""Where the service reads the time: the system clock in production, a settable one in tests so
deadlines and payment windows are reached without sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from shared.events.envelope import utcnow


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class SettableClock:
    """A clock that starts at real time (or ``start``) and moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or utcnow()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when
