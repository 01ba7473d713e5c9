"""A record of every event a consumer has taken, keyed by the event's id.

Effects are made exactly once by their own unique keys; the inbox adds a cheap "seen before"
answer for handlers with nothing else to key on, and counts redeliveries for operators.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter, defaultdict
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.events.envelope import CloudEvent, utcnow
from shared.mongo import Document, insert_once

INBOX = "inbox"


async def remember_event(db: AsyncDatabase[Document], event: CloudEvent[Any], **fields: Any) -> bool:
    """Store the event once; True the first time, False for a redelivery or replay."""
    document = {"_id": event.id, "type": event.type, "subject": event.subject, "time": event.time,
                "received_at": utcnow(), "redeliveries": 0, **fields}
    if await insert_once(db[INBOX], document):
        return True
    await _count_redelivery(db, event.id)
    return False


class _RedeliveryCounter:
    """Redeliveries seen by concurrent handlers in one event-loop turn are counted with one
    ``update_many`` per distinct increment, not one update per event: the store serialises updates
    of a collection, so a replay of a long history would otherwise queue one update per event."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.waiting: list[tuple[str, asyncio.Future[None]]] = []

    async def add(self, event_id: str) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self.waiting:
            loop.call_soon(lambda: loop.create_task(self._flush()))
        self.waiting.append((event_id, future))
        await future

    async def _flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        increments = Counter(event_id for event_id, _ in waiting)
        by_increment: dict[int, list[str]] = defaultdict(list)
        for event_id, times in increments.items():
            by_increment[times].append(event_id)
        try:
            for times, ids in by_increment.items():
                await self.db[INBOX].update_many({"_id": {"$in": ids}}, {"$inc": {"redeliveries": times}})
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in waiting:
            if not future.done():
                future.set_result(None)


_COUNTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _RedeliveryCounter]] = (
    weakref.WeakKeyDictionary())


async def _count_redelivery(db: AsyncDatabase[Document], event_id: str) -> None:
    if not isinstance(db, AsyncDatabase):  # e.g. the dry-run view
        await db[INBOX].update_one({"_id": event_id}, {"$inc": {"redeliveries": 1}})
        return
    per_loop = _COUNTERS.setdefault(asyncio.get_running_loop(), {})
    counter = per_loop.get(id(db))
    if counter is None or counter.db is not db:
        counter = per_loop[id(db)] = _RedeliveryCounter(db)
    await counter.add(event_id)
