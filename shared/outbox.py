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
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shared import metrics
from shared.events.catalog import EVENTS
from shared.events.envelope import CloudEvent, utcnow
from shared.kafka import EventPublisher
from shared.mongo import DUPLICATE_KEY, Document, Indexes

log = structlog.stdlib.get_logger(__name__)

OUTBOX = "outbox"
PENDING = "outbox_pending"
CREATED_AT = "outbox_created_at"
PUBLISHED_AT = "outbox_published_at"


def with_outbox(document: Document, events: Sequence[CloudEvent[Any]], *, relayed: bool = True) -> Document:
    """The document to insert, carrying ``events`` to publish.

    ``relayed=False`` is for documents a Kafka handler inserts and publishes before its offset is
    committed (see ``PublishMarks``): the inbound offset is what says "maybe not published yet",
    so the document is not flagged for the relay, and no update is needed once it is published."""
    document[OUTBOX] = [
        {"id": e.id, "type": e.type, "key": EVENTS[e.type].key_of(e.data), "payload": e.to_json_bytes().decode()}
        for e in events
    ]
    document[PENDING] = bool(events) and relayed
    document[CREATED_AT] = utcnow()
    return document


_HANDLED_BEFORE: ContextVar[bool] = ContextVar("pinwheel_handled_before", default=False)


@contextlib.contextmanager
def handled_before(value: bool = True) -> Iterator[None]:
    """Inside: the event being handled was handled to completion before, i.e. its offset is below
    what the live consumer group committed (an operator's replay). The group commits only after
    the handler returned, and a handler returns only after its guarded documents were published,
    so documents it finds inserted already need no publish-mark lookup."""
    token = _HANDLED_BEFORE.set(value)
    try:
        yield
    finally:
        _HANDLED_BEFORE.reset(token)


def is_handled_before() -> bool:
    return _HANDLED_BEFORE.get()


class PublishMarks:
    """"These documents' events were published": one small insert per document into
    ``outbox_published``, for the documents of ``with_outbox(relayed=False)``.

    Why it is as safe as the relay: such a document is inserted by a Kafka handler, which returns
    only after the events were acknowledged by Kafka; the consumer commits the inbound offset only
    after the handler returned. If the process dies in between, the inbound event is delivered
    again, the handler's insert finds the document (duplicate key) and ``missing`` tells it the
    events may not have gone out, so it publishes the stored ones again (same event ids: consumers
    drop the copy). The mark is written after the acks; without it a duplicate publishes again,
    which is harmless. Unlike clearing ``outbox_pending`` (an update, which FerretDB makes a read
    and a rewrite of the whole document), a mark is a cheap insert."""

    COLLECTION = "outbox_published"

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.marks = db[self.COLLECTION]

    @staticmethod
    def _key(collection: str, document_id: Any) -> str:
        return f"{collection}:{document_id}"

    async def mark(self, collection: str, document_ids: Sequence[Any]) -> None:
        if not document_ids:
            return
        now = utcnow()
        marks = [{"_id": self._key(collection, i), "at": now} for i in document_ids]
        try:
            # not insert_many_once: a mark is bookkeeping, not an effect a replay should count
            await self.marks.insert_many(marks, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    async def expire(self, older_than: timedelta) -> int:
        """Delete marks older than ``older_than``. A mark matters only while the event that made its
        document may still come again uncommitted; without one, a late duplicate publishes the same
        events (same ids) once more, which consumers drop. FerretDB has no TTL indexes."""
        result = await self.marks.delete_many({"at": {"$lt": utcnow() - older_than}})
        return int(result.deleted_count)

    async def missing(self, collection: str, document_ids: Sequence[Any]) -> list[Any]:
        """The ids among ``document_ids`` with no mark. One lookup by ``_id`` each, concurrently:
        FerretDB pushes ``_id`` equality down to an index, not ``$in``."""
        found = await asyncio.gather(*(
            self.marks.find_one({"_id": self._key(collection, i)}, {"_id": 1}) for i in document_ids))
        return [i for i, mark in zip(document_ids, found, strict=True) if mark is None]


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
