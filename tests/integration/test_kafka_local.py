"""aiokafka against a real local Kafka broker started by deploy/local/kafka.py (KRaft, no Docker).

Set KAFKA_BOOTSTRAP_SERVERS to run the client tests against an existing broker instead; the tests that
restart or inspect the local broker are then skipped.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy.local.common import free_port, port_open
from deploy.local.kafka import KAFKA_VERSION, POM, LocalKafka, kafka_version

pytestmark = pytest.mark.integration

EXTERNAL_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
local_only = pytest.mark.skipif(bool(EXTERNAL_BOOTSTRAP), reason="uses an external KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture(scope="module")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    if EXTERNAL_BOOTSTRAP:
        yield None
        return
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller_port)
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()
    assert not kafka.is_running()


@pytest.fixture(scope="module")
def bootstrap(local_kafka: LocalKafka | None) -> str:
    if EXTERNAL_BOOTSTRAP:
        return EXTERNAL_BOOTSTRAP
    assert local_kafka is not None
    return local_kafka.bootstrap_servers


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in partitions.items()])
        errors = {error[0]: error[1] for error in response.topic_errors}
        assert errors == dict.fromkeys(partitions, 0)
    finally:
        await admin.close()


async def consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30) -> list[ConsumerRecord]:
    """Poll until `count` records arrived; fail if fewer arrive in time."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    assert len(records) == count, f"expected {count} records, got {len(records)}"
    return records


async def produce(bootstrap: str, topic: str, values: list[bytes], **kwargs: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, **kwargs)
    finally:
        await producer.stop()


def test_version_comes_from_pom(local_kafka: LocalKafka | None) -> None:
    assert kafka_version(POM) == KAFKA_VERSION
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in POM.read_text()
    if local_kafka is not None:
        libs = local_kafka.install()  # cached: must not run maven again
        assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
        assert (libs / ".complete").read_text().strip() == KAFKA_VERSION
        assert local_kafka.is_running()


async def test_admin_creates_topics_with_partitions(bootstrap: str) -> None:
    six, three = topic_name("admin-six"), topic_name("admin-three")
    await create_topics(bootstrap, {six: 6, three: 3})

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([six, three])}
        assert {name: t["error_code"] for name, t in described.items()} == {six: 0, three: 0}
        assert sorted(p["partition"] for p in described[six]["partitions"]) == list(range(6))
        assert sorted(p["partition"] for p in described[three]["partitions"]) == list(range(3))
        assert {six, three} <= set(await admin.list_topics())

        again = await admin.create_topics([NewTopic(six, num_partitions=6, replication_factor=1)])
        assert [error[1] for error in again.topic_errors] == [36]  # TOPIC_ALREADY_EXISTS
    finally:
        await admin.close()


async def test_idempotent_producer_and_manual_commit(bootstrap: str) -> None:
    topic = topic_name("orders")
    group = topic_name("group")
    await create_topics(bootstrap, {topic: 4})

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    last_offset: dict[TopicPartition, int] = {}
    try:
        for i in range(40):
            meta = await producer.send_and_wait(topic, f"order-{i}".encode(), key=f"user-{i % 8}".encode())
            last_offset[meta.topic_partition] = max(meta.offset, last_offset.get(meta.topic_partition, -1))
        assert producer._txn_manager is not None  # idempotence on: the broker handed out a producer id
        assert producer._txn_manager.producer_id >= 0
    finally:
        await producer.stop()
    assert len(last_offset) > 1  # keys spread over several partitions
    assert sum(offset + 1 for offset in last_offset.values()) == 40  # no duplicates, no gaps

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records = await consume(consumer, 40)
        assert sorted(r.value for r in records) == sorted(f"order-{i}".encode() for i in range(40))
        for key in {r.key for r in records}:  # per-key order is kept
            values = [int(r.value.split(b"-")[1]) for r in records if r.key == key]
            assert values == sorted(values)
        for tp in last_offset:
            assert await consumer.committed(tp) is None  # nothing committed before commit()
        await consumer.commit()
        for tp, offset in last_offset.items():
            assert await consumer.committed(tp) == offset + 1
    finally:
        await consumer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        assert {tp: om.offset for tp, om in offsets.items()} == {tp: o + 1 for tp, o in last_offset.items()}
    finally:
        await admin.close()

    # The same group resumes after its commit: it only sees what was produced since.
    await produce(bootstrap, topic, [b"late-1", b"late-2", b"late-3"])
    resumed = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                               enable_auto_commit=False, auto_offset_reset="earliest")
    await resumed.start()
    try:
        records = await consume(resumed, 3)
        assert sorted(r.value for r in records) == [b"late-1", b"late-2", b"late-3"]
        assert await resumed.getmany(timeout_ms=1000) == {}  # nothing older is redelivered
    finally:
        await resumed.stop()


async def test_offsets_for_times(bootstrap: str) -> None:
    topic = topic_name("timed")
    await create_topics(bootstrap, {topic: 1})
    t0 = (int(time.time()) - 3600) * 1000
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(3):
            meta = await producer.send_and_wait(topic, f"t{i}".encode(), partition=0, timestamp_ms=t0 + 1000 * i)
            assert (meta.offset, meta.timestamp) == (i, t0 + 1000 * i)
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times({tp: t0 + 500})
        assert (found[tp].offset, found[tp].timestamp) == (1, t0 + 1000)
        found = await consumer.offsets_for_times({tp: t0})
        assert (found[tp].offset, found[tp].timestamp) == (0, t0)
        assert (await consumer.offsets_for_times({tp: t0 + 10_000}))[tp] is None
        assert await consumer.beginning_offsets([tp]) == {tp: 0}
        assert await consumer.end_offsets([tp]) == {tp: 3}

        consumer.assign([tp])
        consumer.seek(tp, (await consumer.offsets_for_times({tp: t0 + 2000}))[tp].offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
        assert (record.value, record.timestamp) == (b"t2", t0 + 2000)
    finally:
        await consumer.stop()


async def test_dlq_headers_round_trip(bootstrap: str) -> None:
    source, dlq = topic_name("payments"), topic_name("payments.dlq")
    await create_topics(bootstrap, {source: 2, dlq: 1})
    original_headers = [("trace-id", b"4bf92f3577b34da6"), ("content-type", b"application/json")]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(source, b'{"amount": -1}', key=b"pay-1", headers=original_headers)

        consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=topic_name("payments-svc"),
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            [failed] = await consume(consumer, 1)
            assert list(failed.headers) == original_headers
            dlq_headers = [
                *failed.headers,
                ("x-original-topic", failed.topic.encode()),
                ("x-original-partition", str(failed.partition).encode()),
                ("x-original-offset", str(failed.offset).encode()),
                ("x-error", "ValueError: amount must be > 0 — rejected".encode()),
                ("x-attempt", b"1"),
                ("x-attempt", b"2"),  # repeated keys are legal and keep their order
                ("x-binary", b"\x00\xff\x10"),
                ("x-empty", b""),
            ]
            await producer.send_and_wait(dlq, failed.value, key=failed.key, headers=dlq_headers)
            await consumer.commit()
        finally:
            await consumer.stop()
    finally:
        await producer.stop()

    reader = AIOKafkaConsumer(dlq, bootstrap_servers=bootstrap, group_id=topic_name("dlq-reader"),
                              auto_offset_reset="earliest")
    await reader.start()
    try:
        [dead] = await consume(reader, 1)
    finally:
        await reader.stop()
    assert (dead.key, dead.value) == (b"pay-1", b'{"amount": -1}')
    assert list(dead.headers) == dlq_headers
    headers = dict(dead.headers)
    assert headers["x-original-topic"] == source.encode()
    assert headers["x-error"].decode() == "ValueError: amount must be > 0 — rejected"
    assert [v for k, v in dead.headers if k == "x-attempt"] == [b"1", b"2"]


@local_only
async def test_auto_created_topic_gets_default_partitions(bootstrap: str) -> None:
    topic = topic_name("auto")
    await produce(bootstrap, topic, [b"first"])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == set(range(4))  # num.partitions=4
    finally:
        await producer.stop()


@local_only
async def test_data_survives_stop_start_and_kill(local_kafka: LocalKafka | None, bootstrap: str) -> None:
    assert local_kafka is not None
    topic, group = topic_name("durable"), topic_name("durable-group")
    await create_topics(bootstrap, {topic: 3})
    values = [f"event-{i}".encode() for i in range(30)]
    await produce(bootstrap, topic, values, key=b"same-key")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records = await consume(consumer, 30)
        assert len({r.partition for r in records}) == 1
        committed_tp = TopicPartition(topic, records[0].partition)
        await consumer.commit({committed_tp: 10})
    finally:
        await consumer.stop()

    async def check_persisted() -> None:
        reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                  auto_offset_reset="earliest")
        await reader.start()
        try:
            records = await consume(reader, 30)
            assert [r.value for r in records] == values  # same key => one partition, in order
        finally:
            await reader.stop()
        again = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await again.start()
        try:
            assert await again.committed(committed_tp) == 10
        finally:
            await again.stop()

    pid = local_kafka._pid()
    local_kafka.start()  # idempotent while running
    assert local_kafka._pid() == pid

    await asyncio.to_thread(local_kafka.stop)
    assert not local_kafka.is_running()
    assert not port_open("127.0.0.1", local_kafka.port)
    local_kafka.stop()  # safe twice
    await asyncio.to_thread(local_kafka.start)
    assert local_kafka.is_running()
    await check_persisted()

    await asyncio.to_thread(local_kafka.kill)
    assert not local_kafka.is_running()
    local_kafka.kill()  # safe twice
    await asyncio.to_thread(local_kafka.start)
    await check_persisted()
