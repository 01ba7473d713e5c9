"""Where the rewards service gets the time: the system clock, or a settable one in tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from shared.events.envelope import utcnow


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class ManualClock:
    """The system time shifted by what tests ``advance`` (hold periods, expiry, reservation
    timeouts without sleeping); frozen at ``start`` when one is given."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start
        self._offset = timedelta()

    def now(self) -> datetime:
        return (self._start or utcnow()) + self._offset

    def advance(self, delta: timedelta) -> None:
        self._offset += delta
