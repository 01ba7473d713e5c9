"""Transactional outbox in the same document.

A state change that must be announced is one insert of a document that also carries the events
to publish (``outbox``) and ``outbox_pending: true``. There is no window in which the change is
stored but its events are not: they are the same write. After the insert, the writer publishes at
once (``flush``) and clears the flag; if the process dies first, the relay, polling for pending
documents older than a short grace period, publishes them. Publishing is at-least-once with stable
event ids, so a consumer that sees an event twice drops the second by its id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared import metrics
from shared.events.catalog import EVENTS
from shared.events.envelope import CloudEvent, utcnow
from shared.kafka import EventPublisher
from shared.mongo import Document, Indexes

log = structlog.stdlib.get_logger(__name__)

OUTBOX = "outbox"
PENDING = "outbox_pending"
CREATED_AT = "outbox_created_at"
PUBLISHED_AT = "outbox_published_at"


def with_outbox(document: Document, events: Sequence[CloudEvent[Any]]) -> Document:
    """The document to insert, carrying ``events`` to publish."""
    document[OUTBOX] = [
        {"id": e.id, "type": e.type, "key": EVENTS[e.type].key_of(e.data), "payload": e.to_json_bytes().decode()}
        for e in events
    ]
    document[PENDING] = bool(events)
    document[CREATED_AT] = utcnow()
    return document


def outbox_indexes(collections: Iterable[str]) -> list[Indexes]:
    return [Indexes(name, [IndexModel([(PENDING, ASCENDING), (CREATED_AT, ASCENDING)])]) for name in collections]


class OutboxRelay:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        collections: Sequence[str],
        publisher: EventPublisher,
        service: str,
        poll_seconds: float = 0.5,
        grace: timedelta = timedelta(seconds=2),
    ) -> None:
        self.db = db
        self.collections = list(collections)
        self.publisher = publisher
        self.service = service
        self.poll_seconds = poll_seconds
        self.grace = grace

    async def flush(self, collection: str, document: Document) -> None:
        """Publish a just-inserted document's events and mark them published."""
        for entry in document.get(OUTBOX, []):
            spec = EVENTS[entry["type"]]
            await self.publisher.publish_raw(
                entry["payload"].encode(), topic=spec.topic, key=entry["key"],
                event_id=entry["id"], event_type=entry["type"],
            )
        await self.db[collection].update_one(
            {"_id": document["_id"], PENDING: True}, {"$set": {PENDING: False, PUBLISHED_AT: utcnow()}}
        )

    async def flush_quietly(self, collection: str, document: Document) -> None:
        """flush, leaving the document to the relay if Kafka or the store is down right now."""
        try:
            await self.flush(collection, document)
        except Exception as exc:
            log.warning("outbox publish deferred to the relay", collection=collection,
                        document_id=str(document.get("_id")), error=repr(exc)[:300])

    async def publish_pending(self, older_than: timedelta | None = None, limit: int = 500) -> int:
        """One pass of the relay; returns how many documents it published."""
        cutoff = utcnow() - (self.grace if older_than is None else older_than)
        published = 0
        for name in self.collections:
            cursor = self.db[name].find({PENDING: True, CREATED_AT: {"$lte": cutoff}}).sort(CREATED_AT, 1)
            async for document in cursor.limit(limit):
                await self.flush(name, document)
                published += 1
        return published

    async def backlog(self) -> int:
        total = 0
        for name in self.collections:
            total += await self.db[name].count_documents({PENDING: True})
        metrics.OUTBOX_BACKLOG.labels(self.service).set(total)
        return total

    async def run(self) -> None:
        """Relay loop: runs until cancelled; survives store and broker outages."""
        while True:
            try:
                published = await self.publish_pending()
                if published:
                    log.info("outbox relay published pending documents", count=published)
                await self.backlog()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed", error=repr(exc)[:300])
            await asyncio.sleep(self.poll_seconds)
