"""Publishing the outbox of just-inserted documents off the handler's path, in order, in batches.

The shared ``flush`` publishes one document's events and waits for Kafka's ack and a store update
before the handler returns (about 7 ms a document here). The batcher instead takes documents in
the order they were inserted, hands all their events to the producer at once (enqueued in that
order, so per-key order on ``rewards.events`` is kept), waits for the acks together, then marks the
whole batch published with one update per collection. Nothing is lost if the process dies first:
the documents are still ``outbox_pending`` and the shared relay publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import structlog
from faststream.kafka import KafkaBroker

from shared import metrics
from shared.events.catalog import EVENTS
from shared.events.envelope import utcnow
from shared.kafka import CONTENT_TYPE
from shared.mongo import Document
from shared.outbox import OUTBOX, PENDING, PUBLISHED_AT, OutboxRelay
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)

MAX_BATCH = 1000


class OutboxBatcher:
    def __init__(self, broker: KafkaBroker, relay: OutboxRelay, settings: ServiceSettings, *,
                 enabled: bool = True, max_pending: int = 10_000) -> None:
        self.broker = broker
        self.relay = relay
        self.settings = settings
        self.enabled = enabled
        self.queue: asyncio.Queue[tuple[str, Document]] = asyncio.Queue(max_pending)

    async def submit(self, collection: str, document: Document) -> None:
        """Publish the document's events soon (now, inline, when batching is off)."""
        if not document.get(OUTBOX):
            return
        if not self.enabled:
            await self.relay.flush_quietly(collection, document)
            return
        await self.queue.put((collection, document))  # waits when full: back-pressure on the consumer

    async def run(self) -> None:
        """Background loop; on shutdown it publishes what is queued before stopping."""
        try:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty() and len(batch) < MAX_BATCH:
                    batch.append(self.queue.get_nowait())
                await self._publish(batch)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    while not self.queue.empty():
                        batch = [self.queue.get_nowait() for _ in range(min(self.queue.qsize(), MAX_BATCH))]
                        await self._publish(batch)
            raise

    async def _publish(self, batch: list[tuple[str, Document]]) -> None:
        try:
            acks: list[Any] = []
            for _, document in batch:  # enqueued one after the other: Kafka keeps this order per key
                for entry in document[OUTBOX]:
                    spec = EVENTS[entry["type"]]
                    acks.append(await self.broker.publish(
                        entry["payload"].encode(), topic=self.settings.topic(spec.topic),
                        key=entry["key"].encode(), no_confirm=True,
                        headers={"content-type": CONTENT_TYPE, "ce_id": entry["id"], "ce_type": entry["type"],
                                 "ce_specversion": "1.0"}))
            await asyncio.gather(*acks)
            by_collection: dict[str, list[Any]] = defaultdict(list)
            for collection, document in batch:
                by_collection[collection].append(document["_id"])
                for entry in document[OUTBOX]:
                    metrics.EVENTS_PUBLISHED.labels(self.settings.service_name, entry["type"]).inc()
            for collection, ids in by_collection.items():
                await self.relay.db[collection].update_many(
                    {"_id": {"$in": ids}, PENDING: True}, {"$set": {PENDING: False, PUBLISHED_AT: utcnow()}})
        except Exception as exc:  # the relay publishes whatever is still pending
            log.warning("outbox batch publish deferred to the relay", documents=len(batch), error=repr(exc)[:300])
