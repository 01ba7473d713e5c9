"""Re-run a service's handlers over the historical events of its topics in a time range.

Runs beside the live service: it reads with its own consumer (no consumer group, nothing
committed), so the service keeps consuming; idempotency (unique-key inserts) makes every effect
that already happened a duplicate. Records are processed in key order per partition, different
keys concurrently. ``--dry-run`` runs the same handlers on a read-only view of the store
(see shared/dryrun.py) and reports what would change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.ops.registry import runtime_for
from shared.dryrun import DryRunDatabase
from shared.kafka import EventConsumer, Rejection, topic_partitions
from shared.mongo import tally_effects
from shared.outbox import handled_before

Progress = Callable[[int], None]


@dataclass
class ReplaySummary:
    service: str
    dry_run: bool
    events_read: int = 0
    events_with_effects: int = 0
    effects_applied: int = 0
    duplicates_skipped: int = 0
    ignored: int = 0
    failures: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    would_publish: Counter[str] = field(default_factory=Counter)
    would_write: dict[str, int] = field(default_factory=dict)
    failure_reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service, "dry_run": self.dry_run, "events_read": self.events_read,
            "events_with_effects": self.events_with_effects, "effects_applied": self.effects_applied,
            "duplicates_skipped": self.duplicates_skipped, "ignored": self.ignored, "failures": self.failures,
            "by_type": dict(self.by_type), "would_publish": dict(self.would_publish),
            "would_write": self.would_write, "failure_reasons": dict(self.failure_reasons),
        }


class _CountingDeadLetters:
    """A replay never dead-letters again (the first pass did): it counts instead."""

    def __init__(self, summary: ReplaySummary) -> None:
        self.summary = summary

    async def send(self, record: ConsumerRecord[Any, Any], rejection: Rejection) -> None:
        self.summary.failure_reasons[rejection.reason] += 1


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def plan_ranges(consumer: AIOKafkaConsumer, topics: list[str], start: datetime,
                      end: datetime | None) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition: [first offset at or after ``start``, offset at ``end`` or the current end)."""
    partitions = await topic_partitions(consumer, topics)
    if not partitions:
        return {}
    end_offsets = await consumer.end_offsets(partitions)
    starts = await consumer.offsets_for_times({tp: _millis(start) for tp in partitions})
    stops = await consumer.offsets_for_times({tp: _millis(end) for tp in partitions}) if end else {}
    ranges = {}
    for tp in partitions:
        first = starts.get(tp)
        if first is None:
            continue
        stop = stops.get(tp) if end else None
        last = stop.offset if stop is not None else end_offsets[tp]
        if last > first.offset:
            ranges[tp] = (first.offset, last)
    return ranges


async def replay(service: str, start: datetime, end: datetime | None = None, *, dry_run: bool = False,
                 concurrency: int = 512, progress: Callable[[int, int], None] | None = None,
                 **settings_overrides: Any) -> ReplaySummary:
    if service == "rewards":
        # publish inline: the batching publisher's background loop does not run outside the service
        settings_overrides.setdefault("outbox_batching", False)
    runtime = runtime_for(service, dry_run=dry_run, **settings_overrides)
    settings = runtime.settings
    summary = ReplaySummary(service=service, dry_run=dry_run)
    dead_letters = _CountingDeadLetters(summary)
    by_topic: dict[str, EventConsumer] = {
        settings.topic(c.topic): EventConsumer(settings, c.topic, c.handlers, dead_letters)  # type: ignore[arg-type]
        for c in runtime.consumers
    }
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest", max_poll_records=2000,
                                fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms)
    await consumer.start()
    if not dry_run:
        await runtime.broker.connect()
    try:
        ranges = await plan_ranges(consumer, list(by_topic), start, end)
        total = sum(last - first for first, last in ranges.values())
        if progress:
            progress(0, total)
        if not ranges:
            return summary
        committed = await committed_offsets(settings.kafka_bootstrap_servers, settings.consumer_group)
        consumer.assign(list(ranges))
        for tp, (first, _) in ranges.items():
            consumer.seek(tp, first)
        remaining = dict(ranges)
        limit = asyncio.Semaphore(concurrency)

        def finished(tp: TopicPartition) -> None:
            # paused: no more fetches for it, neither of records past the planned end nor one the
            # broker holds at the end of the log (aiokafka fetches a broker's partitions together)
            remaining.pop(tp, None)
            consumer.pause(tp)

        async def run_key(records: list[ConsumerRecord[Any, Any]]) -> None:
            async with limit:
                for record in records:
                    # below the live group's commit: that group's handler ran to completion on it
                    done = record.offset < committed.get(TopicPartition(record.topic, record.partition), 0)
                    with handled_before(done):
                        await _process(by_topic[record.topic], record, summary)

        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            by_key: dict[tuple[str, bytes | None], list[ConsumerRecord[Any, Any]]] = defaultdict(list)
            read = 0
            for tp, records in batch.items():
                last = remaining.get(tp, (0, 0))[1]
                for record in records:
                    if record.offset < last:
                        by_key[(record.topic, record.key)].append(record)
                        read += 1
                if records and records[-1].offset + 1 >= last:
                    finished(tp)
            if not batch:
                # nothing more to read below the planned ends (e.g. compacted or deleted)
                positions = {tp: await consumer.position(tp) for tp in remaining}
                for tp, position in positions.items():
                    if position >= remaining[tp][1]:
                        finished(tp)
                continue
            await asyncio.gather(*(run_key(records) for records in by_key.values()))
            if progress:
                progress(read, total)
        summary.would_publish.update(runtime.publisher.would_publish)
        if isinstance(runtime.db, DryRunDatabase):
            counts = runtime.db.log.counts
            summary.would_write = {f"{coll}.{op}": n for (coll, op), n in sorted(counts.items())}
        return summary
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            await runtime.broker.stop()
        await runtime.mongo.close()


async def committed_offsets(bootstrap_servers: str, group: str) -> dict[TopicPartition, int]:
    """The live consumer group's committed offsets (nothing if it never committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _process(consumer: EventConsumer, record: ConsumerRecord[Any, Any], summary: ReplaySummary) -> None:
    summary.events_read += 1
    with tally_effects() as tally:
        try:
            outcome = await consumer.process(record)
        except Exception as exc:  # transient after retries: counted, the operator re-runs the range
            summary.failures += 1
            summary.failure_reasons[type(exc).__name__] += 1
            return
    if outcome == "ignored":
        summary.ignored += 1
        return
    if outcome == "dead_lettered":
        summary.failures += 1
        return
    summary.by_type[_type_of(record)] += 1
    if tally.inserted:
        summary.events_with_effects += 1
        summary.effects_applied += tally.inserted
    else:
        summary.duplicates_skipped += 1


def _type_of(record: ConsumerRecord[Any, Any]) -> str:
    try:
        return str(json.loads(record.value)["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
