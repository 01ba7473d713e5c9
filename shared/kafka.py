"""Kafka wiring on FastStream: an idempotent producer, consumers that commit only after the
handler's effects are stored, retries with backoff, and ``<topic>.dlq`` with the reason.

A service has one FastStream batch subscriber for all its topics; each record's CloudEvent is parsed
and handed to the typed handler registered for its ``type``. FastStream's default ack policy for
Kafka commits *before* the handler runs (auto-commit), which loses events when the process dies
mid-handler; we use ``NACK_ON_ERROR``: the offsets of a poll are committed after every handler of
the poll returned, and an exception seeks back so the records are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure, PyMongoError

from shared import metrics
from shared.events.catalog import EVENTS, TOPICS, dlq_topic
from shared.events.envelope import CloudEvent, EventData, new_event_id, utcnow, uuid5_hex
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)

EventHandler = Callable[[CloudEvent[Any]], Awaitable[None]]
EventBatchHandler = Callable[[list[CloudEvent[Any]]], Awaitable[None]]

CONTENT_TYPE = "application/cloudevents+json"
MAX_RECORD_BYTES = 1_000_000
# DLQ headers: the reason and where the record came from; the value is the original bytes.
H_REASON = "dlq-reason"
H_ERROR = "dlq-error"
H_TOPIC = "dlq-original-topic"
H_PARTITION = "dlq-original-partition"
H_OFFSET = "dlq-original-offset"
H_FAILED_AT = "dlq-failed-at"
H_CONSUMER = "dlq-consumer-group"


def make_broker(settings: ServiceSettings, **kwargs: Any) -> KafkaBroker:
    """A broker whose producer is idempotent with ``acks=all``: a published event is on every
    in-sync replica, and producer retries cannot duplicate it in the log."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"pinwheel-{settings.service_name}",
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        request_timeout_ms=15_000,
        graceful_timeout=5.0,
        # FastStream's per-message "Received"/"Processed" lines go to our structlog JSON pipeline,
        # at debug level: at INFO they would be two lines per event.
        logger=logging.getLogger("faststream.pinwheel"),
        log_level=logging.DEBUG,
        description=f"pinwheel {settings.service_name} service",
        **kwargs,
    )


def traceparent_trace_id(traceparent: str | None) -> str | None:
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


def derived_traceparent(event_id: str) -> str:
    """A trace for an event that arrived without one, derived from its id: the events it causes
    share one trace id, and a replay of it lands in the same trace."""
    digest = uuid5_hex("pinwheel-trace:" + event_id)
    return f"00-{digest}-{digest[:16]}-01"


def make_event(
    data: EventData,
    *,
    source: str,
    event_id: str | None = None,
    subject: str | None = None,
    traceparent: str | None = None,
    event_type: str | None = None,
) -> CloudEvent[Any]:
    """Wrap typed ``data`` in its envelope; the type comes from the catalog."""
    from shared.events.catalog import EVENT_TYPE_OF_MODEL

    type_ = event_type or EVENT_TYPE_OF_MODEL[type(data)]
    spec = EVENTS[type_]
    if traceparent is None:
        traceparent = structlog.contextvars.get_contextvars().get("traceparent")
    # the parametrised class is cached: ``CloudEvent[Model]`` is a costly lookup per event
    return _typed_envelope(spec.data_model)(
        id=event_id or new_event_id(),
        source=source,
        type=type_,
        time=utcnow(),
        subject=subject or spec.key_of(data),
        traceparent=traceparent,
        data=data,
    )


class EventPublisher:
    """Publishes CloudEvents to the topic and key the catalog gives their type."""

    def __init__(self, broker: KafkaBroker, settings: ServiceSettings) -> None:
        self._broker = broker
        self._settings = settings
        self.would_publish: Counter[str] = Counter()  # dry run: what would have been published

    async def publish(self, event: CloudEvent[Any]) -> None:
        spec = EVENTS[event.type]
        await self.publish_raw(
            event.to_json_bytes(),
            topic=spec.topic,
            key=spec.key_of(event.data),
            event_id=event.id,
            event_type=event.type,
        )

    async def publish_raw(self, value: bytes, *, topic: str, key: str, event_id: str, event_type: str) -> None:
        if self._settings.dry_run:
            self.would_publish[event_type] += 1
            return
        await self._broker.publish(
            value,
            topic=self._settings.topic(topic),
            key=key.encode(),
            headers={"content-type": CONTENT_TYPE, "ce_id": event_id, "ce_type": event_type,
                     "ce_specversion": "1.0"},
        )
        metrics.EVENTS_PUBLISHED.labels(self._settings.service_name, event_type).inc()


def traceparent_of(event: CloudEvent[Any]) -> str:
    """The event's trace: its own ``traceparent``, or one derived from its id when it came without."""
    return event.traceparent or derived_traceparent(event.id)


def event_log_context(event: CloudEvent[Any]) -> contextlib.AbstractContextManager[None]:
    """Every log line inside names the event, its type and its trace."""
    traceparent = traceparent_of(event)
    return structlog.contextvars.bound_contextvars(
        event_id=event.id, event_type=event.type, traceparent=traceparent,
        trace_id=traceparent_trace_id(traceparent))


def is_transient(exc: BaseException) -> bool:
    """Errors that say the store or broker is unreachable right now, not that the event is bad.
    They are never dead-lettered: the record is delivered again once they pass."""
    if isinstance(exc, ConnectionFailure | KafkaError | asyncio.TimeoutError | TimeoutError | ConnectionError):
        return True
    return isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError")


@dataclass(frozen=True)
class Rejection:
    reason: str
    error: str


_TYPED_ENVELOPES: dict[type[BaseModel], type[CloudEvent[Any]]] = {}


def _typed_envelope(model: type[BaseModel]) -> type[CloudEvent[Any]]:
    envelope = _TYPED_ENVELOPES.get(model)
    if envelope is None:
        envelope = _TYPED_ENVELOPES[model] = CloudEvent[model]  # type: ignore[valid-type]
    return envelope


def parse_event(value: bytes | None) -> CloudEvent[Any] | Rejection | None:
    """The typed CloudEvent in a record, a Rejection saying why it is unusable, or None for a
    well-formed event of a type nobody here handles (ignored by rule: other systems may add types)."""
    if value is None:
        return Rejection("empty_record", "the record has no value")
    if len(value) > MAX_RECORD_BYTES:
        return Rejection("too_large", f"{len(value)} bytes is over {MAX_RECORD_BYTES}")
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        return Rejection("invalid_json", str(exc)[:500])
    if not isinstance(document, dict):
        return Rejection("invalid_envelope", "a CloudEvent is a JSON object")
    event_type = document.get("type")
    spec = EVENTS.get(event_type) if isinstance(event_type, str) else None
    if spec is None:
        if not isinstance(event_type, str) or not document.get("id") or document.get("specversion") != "1.0":
            return Rejection("invalid_envelope", "specversion 1.0, id and type are required")
        return None
    try:
        return _typed_envelope(spec.data_model).model_validate(document)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        return Rejection("invalid_event", details[:1000])


class DeadLetters:
    """Writes a record that cannot be used to ``<topic>.dlq``: original bytes and key untouched,
    original headers kept, the reason in headers."""

    def __init__(self, broker: KafkaBroker, settings: ServiceSettings) -> None:
        self._broker = broker
        self._settings = settings

    async def send(self, record: ConsumerRecord[Any, Any], rejection: Rejection) -> None:
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        headers.update({
            H_REASON: rejection.reason,
            H_ERROR: rejection.error[:2000],
            H_TOPIC: record.topic,
            H_PARTITION: str(record.partition),
            H_OFFSET: str(record.offset),
            H_FAILED_AT: utcnow().isoformat().replace("+00:00", "Z"),
            H_CONSUMER: self._settings.consumer_group,
        })
        await self._broker.publish(
            record.value or b"",
            topic=dlq_topic(record.topic),
            key=record.key,
            headers=headers,
        )
        metrics.EVENTS_DEAD_LETTERED.labels(self._settings.service_name, record.topic, rejection.reason).inc()
        log.warning("event dead-lettered", topic=record.topic, partition=record.partition,
                    offset=record.offset, reason=rejection.reason, error=rejection.error[:300])


class RecentEvents:
    """Ids of the events this process handled to completion lately, the oldest forgotten first.

    A shortcut, never the gate: a handler returns only after its effects are stored (and guarded
    events acknowledged by Kafka), so an event whose id is here changed everything it will ever
    change, and a duplicate of it can be skipped without a store round trip. An id not here (a
    duplicate from before a restart, or handled by another replica) is handled again, and the
    handlers' unique keys make that a no-op. Worth it on FerretDB above all: a batch insert that
    meets one duplicate key is redone there one document at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}  # insertion-ordered: the first key is the oldest

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        if self.capacity <= 0:
            return
        self._ids.pop(event_id, None)
        self._ids[event_id] = None
        while len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]


DuplicateSink = Callable[[list[str]], Awaitable[None]]


class EventConsumer:
    """Runs one topic's records through their typed handlers with retries, DLQ and metrics.

    ``batch_handlers`` (optional, per event type) take several events of one type at once, from
    different keys (see ``process_batch``): one decision pass and one round trip per store for all
    of them instead of one per event. Every batch-handled type also has a per-event handler: when a
    batch fails, its events are handled one by one, each with its own retries and dead-lettering,
    so one bad event never holds back or dead-letters the others (effects are idempotent, so the
    part of the batch that was stored is a no-op the second time)."""

    def __init__(
        self,
        settings: ServiceSettings,
        topic: str,
        handlers: Mapping[str, EventHandler],
        dead_letters: DeadLetters,
        batch_handlers: Mapping[str, EventBatchHandler] | None = None,
        recent: RecentEvents | None = None,
        on_duplicates: DuplicateSink | None = None,
    ) -> None:
        unknown = set(handlers) - {spec.type for spec in TOPICS[topic]}
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not event types of {topic}")
        batch_handlers = dict(batch_handlers or {})
        if set(batch_handlers) - set(handlers):
            raise ValueError(f"{sorted(set(batch_handlers) - set(handlers))} have a batch handler but no "
                             "per-event handler to fall back on")
        self.settings = settings
        self.topic = topic
        self.handlers = dict(handlers)
        self.batch_handlers = batch_handlers
        self.dead_letters = dead_letters
        # used by ``process_batch`` (the live subscriber) only: an operator's replay handles every event
        self.recent = recent if recent is not None else RecentEvents(0)
        self.on_duplicates = on_duplicates

    async def process(self, record: ConsumerRecord[Any, Any]) -> str:
        """Handle one record; returns the outcome. Raises only for transient failures, so the
        caller does not commit the offset and the record comes again."""
        accepted = await self.accept(record)
        if isinstance(accepted, str):
            return accepted
        return await self.handle(record, accepted)

    async def accept(self, record: ConsumerRecord[Any, Any]) -> CloudEvent[Any] | str:
        """The record's event if a handler here takes it; otherwise the outcome (the record is
        dead-lettered when unusable, counted as ignored when nobody here handles its type)."""
        service = self.settings.service_name
        parsed = parse_event(record.value)
        if isinstance(parsed, Rejection):
            await self.dead_letters.send(record, parsed)
            metrics.EVENTS_CONSUMED.labels(service, self.topic, "unknown", "dead_lettered").inc()
            return "dead_lettered"
        if parsed is None or parsed.type not in self.handlers:
            event_type = parsed.type if parsed is not None else "unknown"
            metrics.EVENTS_CONSUMED.labels(service, self.topic, event_type, "ignored").inc()
            return "ignored"
        return parsed

    async def handle(self, record: ConsumerRecord[Any, Any], parsed: CloudEvent[Any]) -> str:
        """Run the event's handler with retries; dead-letter it when it keeps failing for a reason
        that is not transient. Raises for transient failures (the record comes again)."""
        service = self.settings.service_name
        handler = self.handlers[parsed.type]
        with event_log_context(parsed):
            attempt = 0
            while True:
                attempt += 1
                started = time.perf_counter()
                try:
                    await handler(parsed)
                except Exception as exc:
                    if attempt < self.settings.consumer_max_attempts:
                        log.warning("handler failed, retrying", attempt=attempt, error=repr(exc)[:300])
                        await asyncio.sleep(self.settings.consumer_retry_backoff_seconds * 2 ** (attempt - 1))
                        continue
                    if is_transient(exc):
                        metrics.EVENTS_CONSUMED.labels(service, self.topic, parsed.type, "retried").inc()
                        log.error("store or broker unavailable; the event will be delivered again",
                                  error=repr(exc)[:300])
                        raise
                    await self.dead_letters.send(
                        record, Rejection("handler_failed", f"{type(exc).__name__}: {exc}"))
                    metrics.EVENTS_CONSUMED.labels(service, self.topic, parsed.type, "dead_lettered").inc()
                    return "dead_lettered"
                metrics.HANDLER_LATENCY.labels(service, parsed.type).observe(time.perf_counter() - started)
                metrics.EVENTS_CONSUMED.labels(service, self.topic, parsed.type, "handled").inc()
                self.recent.add(parsed.id)
                return "handled"

    async def handle_many(self, event_type: str, items: Sequence[tuple[ConsumerRecord[Any, Any], CloudEvent[Any]]],
                          gate: asyncio.Semaphore) -> list[BaseException | None]:
        """Events of one type from different keys through the type's batch handler; per item,
        None when handled (or dead-lettered) or the transient error that leaves it for redelivery."""
        service = self.settings.service_name
        events = [event for _, event in items]
        started = time.perf_counter()
        # one log context for the batch: a line logged inside names every event it is about
        with structlog.contextvars.bound_contextvars(
            event_type=event_type, event_ids=[event.id for event in events],
            trace_ids=[traceparent_trace_id(traceparent_of(event)) for event in events],
        ):
            try:
                await self.batch_handlers[event_type](events)
            except Exception as exc:
                log.warning("batch handler failed; handling its events one by one", events=len(events),
                            error=repr(exc)[:300])
                return await asyncio.gather(*(self.handle_gated(record, event, gate) for record, event in items))
        elapsed = time.perf_counter() - started
        latency = metrics.HANDLER_LATENCY.labels(service, event_type)
        for _ in events:  # each event waited for the whole batch
            latency.observe(elapsed)
        metrics.EVENTS_CONSUMED.labels(service, self.topic, event_type, "handled").inc(len(events))
        for event in events:
            self.recent.add(event.id)
        return [None] * len(items)

    async def skip_duplicates(self, events: list[CloudEvent[Any]]) -> None:
        """Events this process handled lately, come again: nothing to do but say they came."""
        for event in events:
            metrics.EVENTS_CONSUMED.labels(self.settings.service_name, self.topic, event.type, "duplicate").inc()
        if self.on_duplicates is not None:
            await self.on_duplicates([event.id for event in events])

    async def handle_gated(self, record: ConsumerRecord[Any, Any], event: CloudEvent[Any],
                           gate: asyncio.Semaphore) -> BaseException | None:
        """``handle`` once ``gate`` lets it run; the transient error instead of raising it."""
        async with gate:
            try:
                await self.handle(record, event)
            except Exception as exc:
                return exc
        return None


def register_consumers(broker: KafkaBroker, settings: ServiceSettings, consumers: list[EventConsumer]) -> Any:
    """One batch subscriber for every topic the service consumes, in the service's consumer group,
    committing only after the effects of the whole poll are stored.

    One consumer, not one per topic: several consumers in one group join it one after the other,
    so each join rebalances the others, and after a restart one topic is consumed while the group
    is still rebalancing for the next.

    A poll (up to ``consumer_batch_max_records``) is processed as in ``process_batch``: records of
    one key in order, different keys concurrently. The offsets are committed once per poll, after
    every record's handler returned (one commit round trip per poll, not per record). A transient
    failure of any record rewinds every partition of the poll to its first record, so the whole
    poll comes again; records already handled are duplicates then, which the handlers' unique keys
    make no-ops. Records that cannot be used are dead-lettered one by one, as before."""
    by_topic = {settings.topic(consumer.topic): consumer for consumer in consumers}
    names = [consumer.topic for consumer in consumers]
    types = ", ".join(sorted(t for consumer in consumers for t in consumer.handlers))
    # FastStream creates missing subscribed topics with 1 partition unless told otherwise: one
    # partition would cap every consumer group at one useful replica.
    topics = [Topic(name, num_partitions=settings.topic_partitions) for name in by_topic]
    subscriber = broker.subscriber(
        *topics,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        batch=True,
        max_records=settings.consumer_batch_max_records,
        batch_timeout_ms=settings.consumer_batch_timeout_ms,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        title=f"{settings.service_name}:{'+'.join(names)}",
        description=f"CloudEvents on {', '.join(names)} handled by {settings.service_name}: {types}",
    )

    @subscriber
    async def on_records(message: KafkaMessage) -> None:
        records = message.raw_message
        if not isinstance(records, tuple):
            records = (records,)
        try:
            await process_batch(by_topic, records, settings.consumer_concurrency)
        except Exception:
            # Transient: back off a little so a store outage is not a hot loop of redeliveries.
            await asyncio.sleep(min(5.0, settings.consumer_retry_backoff_seconds * 10))
            raise

    return subscriber


async def process_batch(by_topic: Mapping[str, EventConsumer], records: Sequence[ConsumerRecord[Any, Any]],
                        concurrency: int) -> None:
    """Process one poll: the records of one (topic, key) in offset order, different keys
    concurrently. Kafka orders records per key only, so this keeps every order a handler may rely
    on. Raises (after every key finished) if any record failed transiently, so the caller does not
    commit.

    The poll goes in rounds: round i holds the i-th record of every key, so no two records of a
    round share a key and round i+1 starts when round i is done. Within a round, the events of a
    type with a batch handler go to it together (one pass, one round trip per store), the others
    run concurrently, at most ``concurrency`` at a time. A key whose record failed transiently
    takes no part in later rounds: its remaining records wait for the redelivery."""
    by_key: dict[tuple[str, bytes | None], list[ConsumerRecord[Any, Any]]] = defaultdict(list)
    for record in records:
        by_key[(record.topic, record.key)].append(record)
    if concurrency <= 1:
        for key_records in by_key.values():
            for record in key_records:
                await by_topic[record.topic].process(record)
        return
    gate = asyncio.Semaphore(concurrency)
    failed: dict[tuple[str, bytes | None], BaseException] = {}
    depth = max((len(key_records) for key_records in by_key.values()), default=0)
    for position in range(depth):
        round_ = [(key, key_records[position]) for key, key_records in by_key.items()
                  if len(key_records) > position and key not in failed]
        await _process_round(by_topic, round_, gate, failed)
    if failed:
        raise next(iter(failed.values()))


async def _process_round(by_topic: Mapping[str, EventConsumer],
                         round_: list[tuple[tuple[str, bytes | None], ConsumerRecord[Any, Any]]],
                         gate: asyncio.Semaphore, failed: dict[tuple[str, bytes | None], BaseException]) -> None:
    singles: list[tuple[tuple[str, bytes | None], ConsumerRecord[Any, Any], CloudEvent[Any]]] = []
    batches: dict[tuple[str, str], list[tuple[tuple[str, bytes | None], ConsumerRecord[Any, Any], CloudEvent[Any]]]]
    batches = defaultdict(list)
    duplicates: dict[str, list[CloudEvent[Any]]] = defaultdict(list)
    for key, record in round_:
        consumer = by_topic[record.topic]
        accepted = await consumer.accept(record)
        if isinstance(accepted, str):
            continue
        if accepted.id in consumer.recent:
            duplicates[record.topic].append(accepted)
        elif accepted.type in consumer.batch_handlers:
            batches[(record.topic, accepted.type)].append((key, record, accepted))
        else:
            singles.append((key, record, accepted))

    async def one(key: tuple[str, bytes | None], record: ConsumerRecord[Any, Any], event: CloudEvent[Any]) -> None:
        error = await by_topic[record.topic].handle_gated(record, event, gate)
        if error is not None:
            failed[key] = error

    async def many(topic: str, event_type: str,
                   items: list[tuple[tuple[str, bytes | None], ConsumerRecord[Any, Any], CloudEvent[Any]]]) -> None:
        errors = await by_topic[topic].handle_many(event_type, [(record, event) for _, record, event in items], gate)
        for (key, _, _), error in zip(items, errors, strict=True):
            if error is not None:
                failed[key] = error

    await asyncio.gather(*(one(*single) for single in singles),
                         *(many(topic, event_type, items) for (topic, event_type), items in batches.items()),
                         *(by_topic[topic].skip_duplicates(events) for topic, events in duplicates.items()))


async def topic_partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """The partitions of ``topics`` for a consumer that has not subscribed to them (ops tools).
    aiokafka has no public call for that: ``topics()`` does not refresh the metadata that
    ``partitions_for_topic`` reads, so the client's metadata is refreshed first."""
    await consumer._client.force_metadata_update()
    return [TopicPartition(topic, partition)
            for topic in topics for partition in sorted(consumer.partitions_for_topic(topic) or ())]


async def read_topic(bootstrap_servers: str, topic: str) -> list[ConsumerRecord[Any, Any]]:
    """Every record now on ``topic`` (each partition from its beginning to its current end), in
    partition and offset order; reads without a consumer group and commits nothing (ops, tests)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, [topic])
        if not partitions:
            return []
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > starts[tp]}
        # only partitions with records, each paused once read: a fetch for a partition at its end
        # is held by the broker and delays the others on that broker (see consumer_fetch_max_wait_ms)
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, starts[tp])
        found: list[ConsumerRecord[Any, Any]] = []
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                found.extend(record for record in records if record.offset < ends[tp])
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        return sorted(found, key=lambda record: (record.partition, record.offset))
    finally:
        await consumer.stop()
