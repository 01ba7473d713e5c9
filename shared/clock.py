"""Where a service reads the time: the system clock in production; in tests a clock that moves only
when told (deadlines, payment windows, holds and expiries are reached without sleeping)."""

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
    """Starts at real time (or ``start``) and stands still until ``advance`` or ``set``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or utcnow()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


class ShiftedClock:
    """The system time shifted by what tests ``advance``; frozen at ``start`` when one is given."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start
        self._offset = timedelta()

    def now(self) -> datetime:
        return (self._start or utcnow()) + self._offset

    def advance(self, delta: timedelta) -> None:
        self._offset += delta
