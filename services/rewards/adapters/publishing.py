"""Publishing the outbox of just-inserted documents in ordered batches.

Two kinds of documents come here (see ``shared.outbox``):

- relayed ones (``outbox_pending: true``; coupon transitions, ledger entries): ``submit`` queues
  them and returns; the batch is published, then marked published with one update per collection.
  If the process dies first, the relay publishes them.
- guarded ones (issued coupons, the bulk of the traffic): ``publish`` returns once their events are
  acknowledged by Kafka, so the handler, and with it the inbound offset, waits for that; a publish
  mark is inserted right after. ``ensure_published`` is what a redelivered event calls for documents
  it finds inserted already, to publish the ones whose mark is missing (a mark lost to a crash
  costs one more publish of the same events, never a lost one).

Events of a batch are handed to the producer in queue order (Kafka keeps that order per key) and
their acks are awaited together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from faststream.kafka import KafkaBroker

from shared import metrics
from shared.events.catalog import EVENTS
from shared.events.envelope import utcnow
from shared.kafka import CONTENT_TYPE
from shared.mongo import Document
from shared.outbox import OUTBOX, PENDING, PUBLISHED_AT, OutboxRelay, PublishMarks, is_handled_before
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)

MAX_BATCH = 1000
MAX_RECORDING = 8  # published batches whose marks / flags may be written at once


@dataclass
class _Queued:
    collection: str
    document: Document
    done: asyncio.Future[None] | None = field(default=None)  # set for guarded documents


class OutboxBatcher:
    def __init__(self, broker: KafkaBroker, relay: OutboxRelay, settings: ServiceSettings, *,
                 enabled: bool = True, max_pending: int = 10_000) -> None:
        self.broker = broker
        self.relay = relay
        self.marks = PublishMarks(relay.db)
        self.settings = settings
        self.enabled = enabled
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(max_pending)
        self.in_flight: dict[tuple[str, Any], asyncio.Future[None]] = {}
        self.recording: set[asyncio.Task[None]] = set()  # marks / flags of published batches being written

    async def submit(self, collection: str, document: Document) -> None:
        """Relayed document: publish its events soon (now, inline, when batching is off)."""
        if not document.get(OUTBOX):
            return
        if not self.enabled:
            await self.relay.flush_quietly(collection, document)
            return
        await self.queue.put(_Queued(collection, document))  # waits when full: back-pressure

    async def publish(self, collection: str, documents: Sequence[Document]) -> None:
        """Guarded documents: return once their events are acknowledged by Kafka; raise if that
        failed (the caller's event is then handled again, which publishes them)."""
        documents = [d for d in documents if d.get(OUTBOX)]
        if not documents:
            return
        if not self.enabled:
            for document in documents:
                for entry in document[OUTBOX]:
                    await self.relay.publisher.publish_raw(
                        entry["payload"].encode(), topic=EVENTS[entry["type"]].topic, key=entry["key"],
                        event_id=entry["id"], event_type=entry["type"])
            await self.marks.mark(collection, [d["_id"] for d in documents])
            return
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for document in documents:
            key = (collection, document["_id"])
            done = self.in_flight.get(key)
            if done is None:
                done = self.in_flight[key] = loop.create_future()
                await self.queue.put(_Queued(collection, document, done))
            waiting.append(done)
        await asyncio.gather(*waiting)

    async def ensure_published(self, collection: str, document_ids: Sequence[Any],
                               find: Any) -> int:
        """For guarded documents found inserted already (a redelivery, a replay): publish those
        whose mark is missing, from the stored document. ``find(id)`` reads one. Returns how many
        were published again."""
        if is_handled_before():  # a replay of committed history: published by the first run
            return 0
        in_flight = [self.in_flight[(collection, i)] for i in document_ids if (collection, i) in self.in_flight]
        rest = [i for i in document_ids if (collection, i) not in self.in_flight]
        await asyncio.gather(*in_flight)
        stored = [d for d in await asyncio.gather(*(find(i) for i in await self.marks.missing(collection, rest)))
                  if d is not None and not d.get(PENDING)]  # pending ones are the relay's
        if stored:
            log.info("publishing again events of documents stored before a crash", count=len(stored))
            await self.publish(collection, stored)
        return len(stored)

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
            for item in [*self.in_flight.values()]:
                if not item.done():
                    item.cancel()
            if self.recording:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await asyncio.gather(*self.recording, return_exceptions=True)
            raise

    async def _publish(self, batch: list[_Queued]) -> None:
        try:
            acks: list[Any] = []
            for item in batch:  # enqueued one after the other: Kafka keeps this order per key
                for entry in item.document[OUTBOX]:
                    spec = EVENTS[entry["type"]]
                    acks.append(await self.broker.publish(
                        entry["payload"].encode(), topic=self.settings.topic(spec.topic),
                        key=entry["key"].encode(), no_confirm=True,
                        headers={"content-type": CONTENT_TYPE, "ce_id": entry["id"], "ce_type": entry["type"],
                                 "ce_specversion": "1.0"}))
            await asyncio.gather(*acks)
            for item in batch:
                for entry in item.document[OUTBOX]:
                    metrics.EVENTS_PUBLISHED.labels(self.settings.service_name, entry["type"]).inc()
            relayed: dict[str, list[Any]] = defaultdict(list)
            guarded: dict[str, list[Any]] = defaultdict(list)
            for item in batch:
                (guarded if item.done is not None else relayed)[item.collection].append(item.document["_id"])
            # Acknowledged by Kafka: the handlers may return and their offsets be committed now. The
            # marks only spare a later duplicate of the event a second publish (same event ids), and
            # a relayed document left flagged is published again by the relay (same ids): both are
            # written in the background, so the next batch does not wait for the store, and a
            # failure to write them is harmless.
            self._settle(batch, None)
        except Exception as exc:  # guarded: the handler fails and its event comes again; relayed: the relay
            self._settle(batch, exc)
            log.warning("outbox batch publish failed", documents=len(batch), error=repr(exc)[:300])
            return
        while len(self.recording) >= MAX_RECORDING:  # the store is behind: wait, do not pile up
            await asyncio.wait(self.recording, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._record_published(guarded, relayed))
        self.recording.add(task)
        task.add_done_callback(self.recording.discard)

    async def _record_published(self, guarded: dict[str, list[Any]], relayed: dict[str, list[Any]]) -> None:
        try:
            for collection, ids in guarded.items():
                await self.marks.mark(collection, ids)
            for collection, ids in relayed.items():
                await self.relay.db[collection].update_many(
                    {"_id": {"$in": ids}, PENDING: True}, {"$set": {PENDING: False, PUBLISHED_AT: utcnow()}})
        except Exception as exc:
            log.warning("could not record a published batch (its events may be published again)",
                        error=repr(exc)[:300])

    def _settle(self, batch: list[_Queued], error: BaseException | None) -> None:
        for item in batch:
            if item.done is None:
                continue
            self.in_flight.pop((item.collection, item.document["_id"]), None)
            if item.done.done():
                continue
            if error is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(error)
