"""How a poll is processed (``shared.kafka.process_batch``): key order, batch handlers and their
fallback, and duplicates skipped by the recently-handled ids. Orchestration only: the handlers
here record what they are given; the real handlers are exercised against Kafka and the store in
the integration tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import CloudEvent
from shared.kafka import (
    DeadLetters,
    EventConsumer,
    RecentEvents,
    Rejection,
    make_broker,
    process_batch,
    register_consumers,
)
from shared.settings import ServiceSettings
from tests.support.events import order_completed, order_refunded

TOPIC = "orders.events"


class _DeadLetters(DeadLetters):
    def __init__(self) -> None:  # records instead of publishing
        self.sent: list[tuple[int, str]] = []

    async def send(self, record: ConsumerRecord[Any, Any], rejection: Rejection) -> None:
        self.sent.append((record.offset, rejection.reason))


def _record(offset: int, event: dict[str, Any], value: bytes | None = None) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic=TOPIC, partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=event["data"]["user_id"].encode(), value=value or json.dumps(event).encode(),
                          checksum=None, serialized_key_size=0, serialized_value_size=0, headers=())


def _settings() -> ServiceSettings:
    return ServiceSettings(consumer_retry_backoff_seconds=0.0, consumer_max_attempts=1)


class _Recorder:
    """Handlers that log what they saw, in the order they saw it."""

    def __init__(self, fail_batches: bool = False, fail_ids: frozenset[str] = frozenset()) -> None:
        self.seen: list[str] = []  # event ids, per-event and batch alike
        self.batches: list[list[str]] = []
        self.fail_batches = fail_batches
        self.fail_ids = fail_ids

    async def one(self, event: CloudEvent[Any]) -> None:
        await asyncio.sleep(0)
        if event.id in self.fail_ids:
            raise ConnectionError("store unreachable")  # transient: not dead-lettered
        self.seen.append(event.id)

    async def many(self, events: list[CloudEvent[Any]]) -> None:
        if self.fail_batches:
            raise RuntimeError("one bad event in the batch")
        self.batches.append([e.id for e in events])
        self.seen.extend(e.id for e in events)


def _consumer(recorder: _Recorder, recent: RecentEvents | None = None,
              duplicates: list[str] | None = None) -> tuple[EventConsumer, _DeadLetters]:
    dead = _DeadLetters()

    async def on_duplicates(ids: list[str]) -> None:
        if duplicates is not None:
            duplicates.extend(ids)

    consumer = EventConsumer(_settings(), TOPIC, {"order.completed": recorder.one, "order.refunded": recorder.one},
                             dead, {"order.completed": recorder.many}, recent=recent, on_duplicates=on_duplicates)
    return consumer, dead


async def test_a_batch_handler_gets_one_event_per_key_per_round_and_key_order_is_kept() -> None:
    recorder = _Recorder()
    consumer, _ = _consumer(recorder)
    events = [order_completed("ann", "o1"), order_completed("bob", "o2"), order_refunded("ann", "o1"),
              order_completed("ann", "o3"), order_completed("cid", "o4")]
    await process_batch({TOPIC: consumer}, [_record(i, e) for i, e in enumerate(events)], concurrency=8)
    ids = [e["id"] for e in events]
    assert sorted(recorder.seen) == sorted(ids)
    # ann's three events in offset order, whatever ran beside them
    anns = [recorder.seen.index(ids[i]) for i in (0, 2, 3)]
    assert anns == sorted(anns)
    assert recorder.batches[0] == [ids[0], ids[1], ids[4]]  # first round: the first event of each key
    assert [ids[3]] in recorder.batches  # ann's second completed order waited for her refund
    for batch in recorder.batches:
        keys = [next(e for e in events if e["id"] == i)["data"]["user_id"] for i in batch]
        assert len(keys) == len(set(keys))


async def test_a_failing_batch_is_handled_event_by_event_and_a_failed_key_stops_there() -> None:
    events = [order_completed("ann", "o1"), order_completed("bob", "o2"), order_completed("bob", "o3")]
    recorder = _Recorder(fail_batches=True, fail_ids=frozenset({events[1]["id"]}))
    consumer, dead = _consumer(recorder)
    with pytest.raises(ConnectionError):  # the poll is not committed: it comes again
        await process_batch({TOPIC: consumer}, [_record(i, e) for i, e in enumerate(events)], concurrency=8)
    # ann's event was handled on its own; bob's first failed, so his second was not tried
    assert recorder.seen == [events[0]["id"]]
    assert dead.sent == []


async def test_events_handled_lately_are_skipped_and_reported_as_redelivered() -> None:
    recorder = _Recorder()
    duplicates: list[str] = []
    consumer, _ = _consumer(recorder, RecentEvents(100), duplicates)
    first = [order_completed("ann", "o1"), order_completed("bob", "o2")]
    await process_batch({TOPIC: consumer}, [_record(i, e) for i, e in enumerate(first)], concurrency=8)
    again = [first[1], order_completed("cid", "o3"), first[0], first[0]]
    await process_batch({TOPIC: consumer}, [_record(10 + i, e) for i, e in enumerate(again)], concurrency=8)
    assert sorted(recorder.seen) == sorted([first[0]["id"], first[1]["id"], again[1]["id"]])
    assert sorted(duplicates) == sorted([first[1]["id"], first[0]["id"], first[0]["id"]])


async def test_unusable_records_are_dead_lettered_without_holding_back_the_rest() -> None:
    recorder = _Recorder()
    consumer, dead = _consumer(recorder)
    good = order_completed("ann", "o1")
    bad = _record(1, order_completed("bob", "o2"), value=b"{not json")
    await process_batch({TOPIC: consumer}, [_record(0, good), bad], concurrency=8)
    assert recorder.seen == [good["id"]]
    assert dead.sent == [(1, "invalid_json")]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30), st.integers(1, 300))
def test_recent_events_keep_the_newest_ids_up_to_the_capacity(ids: list[int], capacity: int) -> None:
    recent = RecentEvents(capacity)
    for i in ids:
        recent.add(str(i))
    newest_first = list(dict.fromkeys(reversed(ids)))  # each id once, by its last addition
    assert all(str(i) in recent for i in newest_first[:capacity])
    assert len(recent) == min(capacity, len(newest_first))
    assert all(str(i) not in recent for i in newest_first[capacity:])


@pytest.mark.parametrize("configured", [None, 20])
def test_the_service_subscriber_bounds_how_long_the_broker_holds_an_empty_fetch(configured: int | None) -> None:
    """aiokafka's default (500 ms) let a fetch for idle topics hold back a busy one after every
    large poll: a steady ~0.5 s lag (``bench/fetch_wait.py`` shows it against a real broker)."""
    settings = ServiceSettings() if configured is None else ServiceSettings(consumer_fetch_max_wait_ms=configured)
    consumer = EventConsumer(settings, TOPIC, {"order.completed": _Recorder().one}, _DeadLetters())
    subscriber = register_consumers(make_broker(settings), settings, [consumer])
    # what FastStream hands to AIOKafkaConsumer when the subscriber starts
    assert subscriber._connection_args["fetch_max_wait_ms"] == (configured or 50)
