"""A record of every event a consumer has taken, keyed by the event's id.

Effects are made exactly once by their own unique keys; the inbox adds a cheap "seen before"
answer for handlers with nothing else to key on, and records redeliveries for operators: one small
document per redelivery in ``inbox_redeliveries`` (an insert; a counter on the inbox document
would be an update, which FerretDB makes a read and a rewrite, too slow for a replay of a history).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.events.envelope import CloudEvent, utcnow
from shared.mongo import Document, Indexes, insert_many_once, insert_once

INBOX = "inbox"
REDELIVERIES = "inbox_redeliveries"
INDEXES = [Indexes(REDELIVERIES, [IndexModel([("event_id", ASCENDING)])])]


def _inbox_document(event: CloudEvent[Any], **fields: Any) -> Document:
    return {"_id": event.id, "type": event.type, "subject": event.subject, "time": event.time,
            "received_at": utcnow(), **fields}


async def remember_event(db: AsyncDatabase[Document], event: CloudEvent[Any], **fields: Any) -> bool:
    """Store the event once; True the first time, False for a redelivery or replay."""
    if await insert_once(db[INBOX], _inbox_document(event, **fields)):
        return True
    await _count_redelivery(db, event.id)
    return False


async def remember_events(db: AsyncDatabase[Document], events: list[CloudEvent[Any]]) -> list[bool]:
    """``remember_event`` for several events: one insert, and one for the redeliveries among them."""
    new = set(await insert_many_once(db[INBOX], [_inbox_document(event) for event in events]))
    await record_redeliveries(db, [event.id for i, event in enumerate(events) if i not in new])
    return [i in new for i in range(len(events))]


async def record_redeliveries(db: AsyncDatabase[Document], event_ids: list[str]) -> None:
    """Say these events came again (one small insert each, one round trip)."""
    if event_ids:
        at = utcnow()
        await db[REDELIVERIES].insert_many([{"event_id": event_id, "at": at} for event_id in event_ids],
                                          ordered=False)


async def redeliveries(db: AsyncDatabase[Document], event_id: str) -> int:
    """How many times the event came again after its first delivery."""
    return int(await db[REDELIVERIES].count_documents({"event_id": event_id}))


class _RedeliveryCounter:
    """Redeliveries seen by concurrent handlers in one event-loop turn are recorded with one
    ``insert_many``, not one round trip per event."""

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
        try:
            await record_redeliveries(self.db, [event_id for event_id, _ in waiting])
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
    if not isinstance(db, AsyncDatabase):  # e.g. the dry-run view: nothing to coalesce
        await record_redeliveries(db, [event_id])
        return
    per_loop = _COUNTERS.setdefault(asyncio.get_running_loop(), {})
    counter = per_loop.get(id(db))
    if counter is None or counter.db is not db:
        counter = per_loop[id(db)] = _RedeliveryCounter(db)
    await counter.add(event_id)
