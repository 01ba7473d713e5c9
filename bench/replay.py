"""Scenario 4: replaying the full history of the rewards topics through the ops replay.

The history (``--replay-events`` distinct events: ``referral.qualified``, ``groupbuy.group_formed``
and ``order.completed``, plus 10% exact duplicates) is produced, then applied once by a rewards
process (the live service). Then ``services.ops.replay.replay`` (what ``pinwheel ops replay rewards
--from ...`` runs) re-runs the handlers over every record from the beginning, in process; the
figure is its wall time, and it must apply zero new effects. Baseline: reading the same records
with a plain aiokafka consumer and ``json.loads`` (the cost of reading the history at all).
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient

from bench.common import (
    Infra,
    ScenarioResult,
    create_topics,
    drop_database,
    drop_topics,
    encode,
    finish_chart,
    group_formed,
    namespace,
    order_completed,
    produce,
    pyplot,
    qualified,
    service_processes,
)
from bench.rewards_throughput import TOPICS, _watch
from services.ops.replay import replay
from shared.events import catalog
from shared.kafka import topic_partitions


def history(ns: str, n: int, duplicates: float) -> tuple[list[tuple[str, str, bytes]], int]:
    """Records and the number of effects they should make (one coupon or inbox record each)."""
    distinct = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            inviter = f"inv{i % 997}"
            distinct.append((f"{ns}.{catalog.REFERRAL}", inviter, encode(qualified(inviter, f"u{i}"))))
        elif kind == 1:
            distinct.append((f"{ns}.{catalog.GROUPBUY}", f"g{i}", encode(group_formed(f"g{i}", f"u{i}"))))
        else:
            distinct.append((f"{ns}.{catalog.ORDERS}", f"b{i}", encode(order_completed(f"b{i}", f"o{i}"))))
    records = distinct + random.sample(distinct, int(n * duplicates))
    random.shuffle(records)
    return records, n


async def _raw_read(infra: Infra, ns: str, total: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=infra.bootstrap_servers, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest", max_poll_records=2000)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, [f"{ns}.{t}" for t in TOPICS])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        read = 0
        while read < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batch.values():
                for record in records:
                    json.loads(record.value)
                    read += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def scenario_replay(infra: Infra, n: int, duplicates: float) -> ScenarioResult:
    result = ScenarioResult("4_replay", "Replay of the full rewards history (ops replay)",
                            target="≥ 10,000 events/s and zero new effects")
    started = time.perf_counter()
    ns = namespace("rp")
    await create_topics(infra.bootstrap_servers, [f"{ns}.{t}" for t in TOPICS], 4)
    since = datetime.now(UTC) - timedelta(minutes=1)
    records, effects = history(ns, n, duplicates)
    await produce(infra.bootstrap_servers, records)
    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_uri)
    db = client[f"{ns}_rewards"]
    try:
        apply_started = time.perf_counter()
        async with service_processes("rewards", infra, ns):
            await _watch(infra.bootstrap_servers, f"{ns}-rewards", {f"{ns}.{t}" for t in TOPICS}, len(records),
                         timeout=3600, poll=0.5)
        apply_seconds = time.perf_counter() - apply_started
        before = await db.coupons.count_documents({}) + await db.inbox.count_documents({})
        replay_started = time.perf_counter()
        summary = await replay("rewards", since, kafka_bootstrap_servers=infra.bootstrap_servers,
                               mongodb_uri=infra.mongodb_uri, topic_prefix=f"{ns}.",
                               mongodb_database=f"{ns}_rewards", consumer_group=f"{ns}-rewards",
                               log_level="WARNING")
        replay_seconds = time.perf_counter() - replay_started
        after = await db.coupons.count_documents({}) + await db.inbox.count_documents({})
        raw_seconds = await _raw_read(infra, ns, len(records))
    finally:
        await client.close()
        await drop_database(infra, f"{ns}_rewards")
        await drop_topics(infra, ns)
    rate = summary.events_read / replay_seconds
    raw_rate = len(records) / raw_seconds
    result.figures = {"records": len(records), "replay_seconds": replay_seconds, "replay_events_per_s": rate,
                      "raw_read_events_per_s": raw_rate, "first_apply_seconds": apply_seconds,
                      "effects_expected": effects, "effects_before": before, "effects_after": after,
                      "summary": summary.as_dict()}
    result.rows = [
        {"run": "ops replay (rewards handlers, nothing new)", "records": summary.events_read,
         "seconds": replay_seconds, "events/s": rate, "new effects": summary.effects_applied,
         "duplicates skipped": summary.duplicates_skipped, "failures": summary.failures},
        {"run": "raw read baseline (getmany + json.loads)", "records": len(records), "seconds": raw_seconds,
         "events/s": raw_rate, "new effects": None, "duplicates skipped": None, "failures": None},
    ]
    result.met = rate >= 10_000 and summary.effects_applied == 0 and after == before
    result.notes.append(f"the history was first applied by a rewards process in {apply_seconds:.1f} s "
                        f"({len(records) / apply_seconds:.0f} records/s including its start-up); "
                        f"store effects before/after the replay: {before}/{after}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = ["raw read", "ops replay"]
    values = [raw_rate, rate]
    bars = ax.barh(names, values, color=["#999999", "#2ca02c"])
    ax.axvline(10_000, color="red", linestyle="--", label="target 10,000/s")
    ax.bar_label(bars, labels=[f"{v:,.0f}/s" for v in values], padding=3)
    ax.set_xlim(0, max([*values, 10_000]) * 1.3)
    ax.set_xlabel("events/s")
    ax.set_title(f"Replay of {len(records):,} records: {summary.effects_applied} new effects")
    ax.legend(loc="lower right")
    return finish_chart(fig, result, started)
