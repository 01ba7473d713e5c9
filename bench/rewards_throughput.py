"""Scenarios 1 and 5: how fast the rewards consumer applies a backlog, against a raw consumer.

The events (half ``referral.qualified`` = one coupon each, half ``order.completed`` = one inbox
record each, plus exact duplicates) are produced first; then the service processes start and the
consumer group's committed offsets are polled until every record is committed (a poll is committed
only after its effects are stored). The clock starts at the first commit (the group has joined and
the first batch is through) and stops at the last, so the figure is the consumer's steady rate, not
the producer's or the group join's (reported apart); the stored effects are counted at the end.

Baseline: one plain aiokafka consumer in a consumer group, ``getmany`` then one ``insert_many``
of the parsed records (documents of the same size) per poll, offsets committed after the insert.
No parsing into models, no rules, no outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError

from bench.common import (
    Infra,
    ScenarioResult,
    create_topics,
    drop_database,
    drop_topics,
    encode,
    finish_chart,
    namespace,
    order_completed,
    produce,
    pyplot,
    qualified,
    service_processes,
)
from shared.events import catalog

TOPICS = (catalog.REFERRAL, catalog.GROUPBUY, catalog.ORDERS)


@dataclass
class Backlog:
    records: list[tuple[str, str, bytes]]
    coupons: int  # expected coupons (one per distinct referral.qualified)
    orders: int  # expected inbox records (one per distinct order.completed)


def make_backlog(ns: str, n: int, duplicates: float) -> Backlog:
    distinct: list[tuple[str, str, bytes]] = []
    coupons = orders = 0
    for i in range(n):
        if i % 2:
            inviter = f"inv{i % 997}"
            distinct.append((f"{ns}.{catalog.REFERRAL}", inviter, encode(qualified(inviter, f"u{i}"))))
            coupons += 1
        else:
            buyer = f"buyer{i}"
            distinct.append((f"{ns}.{catalog.ORDERS}", buyer, encode(order_completed(buyer, f"o{i}"))))
            orders += 1
    records = distinct + random.sample(distinct, int(n * duplicates))  # exact duplicates: same bytes
    random.shuffle(records)
    return Backlog(records, coupons, orders)


async def _committed(admin: AIOKafkaAdminClient, group: str, topics: set[str]) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic in topics and meta.offset > 0)


async def _watch(bootstrap: str, group: str, topics: set[str], total: int, timeout: float,
                 poll: float = 0.05) -> tuple[float, float, int]:
    """Wait for the group's first commit and then for all records committed; returns (t_first,
    t_all, records committed at t_first). The consumers commit only after a poll's effects are
    stored, so this is the rate of stored effects, read from Kafka: counting documents in the store
    instead would load the store being measured (FerretDB counts by reading every document)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.perf_counter() + timeout
        first_at = None
        first_count = 0
        while time.perf_counter() < deadline:
            committed = await _committed(admin, group, topics)
            now = time.perf_counter()
            if committed and first_at is None:
                first_at, first_count = now, committed
            if committed >= total:
                return first_at or now, now, first_count
            await asyncio.sleep(poll)
        raise TimeoutError(f"only {await _committed(admin, group, topics)} of {total} records committed "
                           f"after {timeout}s")
    finally:
        await admin.close()


async def run_service(infra: Infra, n: int, duplicates: float, processes: int = 1, partitions: int = 4,
                      timeout: float = 600, profile: Any = None) -> dict[str, Any]:
    ns = namespace("rw")
    await create_topics(infra.bootstrap_servers, [f"{ns}.{t}" for t in TOPICS], partitions)
    backlog = make_backlog(ns, n, duplicates)
    await produce(infra.bootstrap_servers, backlog.records)
    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_uri)
    db = client[f"{ns}_rewards"]
    total = len(backlog.records)
    # watching from before the first process starts: a fast process may commit most of the backlog
    # before the others are up, and a watcher started after them would see only the tail
    watcher = asyncio.create_task(_watch(infra.bootstrap_servers, f"{ns}-rewards",
                                         {f"{ns}.{t}" for t in TOPICS}, total, timeout))
    try:
        started = time.perf_counter()
        async with service_processes("rewards", infra, ns, processes, profile_dir=profile):
            ready = time.perf_counter()
            first, done, first_count = await watcher
            await asyncio.sleep(1.0)  # anything applied twice would show up now
            coupons = await db.coupons.count_documents({})
            inbox = await db.inbox.count_documents({})
        handled = total - first_count  # records committed after the first commit
        seconds = max(done - first, 1e-6)
        return {"processes": processes, "partitions": partitions, "records": total, "distinct": n,
                "duplicates": total - n, "seconds": seconds, "events_per_s": handled / seconds,
                "startup_s": ready - started, "join_s": max(0.0, first - started),
                "committed_at_first_commit": first_count,
                "coupons": coupons, "expected_coupons": backlog.coupons, "inbox": inbox,
                "expected_inbox": backlog.orders,
                "exact": coupons == backlog.coupons and inbox == backlog.orders}
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await client.close()
        await drop_database(infra, f"{ns}_rewards")
        await drop_topics(infra, ns)


async def run_baseline(infra: Infra, n: int, duplicates: float, partitions: int = 4,
                       max_records: int = 500) -> dict[str, Any]:
    """getmany + insert_many of the parsed records (same sizes), commit after; no business logic."""
    ns = namespace("raw")
    await create_topics(infra.bootstrap_servers, [f"{ns}.{t}" for t in TOPICS], partitions)
    backlog = make_backlog(ns, n, duplicates)
    await produce(infra.bootstrap_servers, backlog.records)
    total = len(backlog.records)
    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_uri)
    collection = client[f"{ns}_raw"]["records"]
    consumer = AIOKafkaConsumer(*(f"{ns}.{t}" for t in TOPICS), bootstrap_servers=infra.bootstrap_servers,
                                group_id=f"{ns}-raw", enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=max_records)
    await consumer.start()
    try:
        seen = 0
        first = None
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            if first is None:
                first = time.perf_counter()
            docs = [{"_id": f"{r.topic}:{r.partition}:{r.offset}", "key": r.key.decode() if r.key else None,
                     "event": json.loads(r.value)} for r in records]
            with contextlib.suppress(BulkWriteError):  # duplicates by offset: none here
                await collection.insert_many(docs, ordered=False)
            await consumer.commit()
            seen += len(records)
        assert first is not None
        seconds = max(time.perf_counter() - first, 1e-6)
        stored = await collection.count_documents({})
        return {"records": total, "seconds": seconds, "events_per_s": total / seconds, "stored": stored}
    finally:
        await consumer.stop()
        await client.close()
        await drop_database(infra, f"{ns}_raw")
        await drop_topics(infra, ns)


async def scenario_throughput(infra: Infra, n: int, duplicates: float, profile: Any = None) -> ScenarioResult:
    result = ScenarioResult("1_rewards_throughput", "Rewards consumer throughput",
                            target="≥ 3,000 events/s per process and ≥ 0.5× the raw baseline")
    started = time.perf_counter()
    baseline = await run_baseline(infra, n, duplicates)
    service = await run_service(infra, n, duplicates, profile=profile)
    ratio = service["events_per_s"] / baseline["events_per_s"]
    result.figures = {"service": service, "baseline": baseline, "ratio": ratio}
    result.rows = [
        {"run": "rewards service (1 process)", "records": service["records"], "seconds": service["seconds"],
         "events/s": service["events_per_s"], "to first commit s": service["join_s"],
         "effects exact": service["exact"]},
        {"run": "raw baseline (getmany + insert_many)", "records": baseline["records"],
         "seconds": baseline["seconds"], "events/s": baseline["events_per_s"], "to first commit s": None,
         "effects exact": baseline["stored"] == baseline["records"]},
    ]
    result.met = service["events_per_s"] >= 3000 and ratio >= 0.5 and service["exact"]
    result.notes.append(f"ratio service/baseline = {ratio:.2f}; {service['duplicates']} exact duplicates "
                        f"granted nothing: coupons {service['coupons']}/{service['expected_coupons']}, "
                        f"inbox {service['inbox']}/{service['expected_inbox']}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = ["raw baseline", "rewards service"]
    values = [baseline["events_per_s"], service["events_per_s"]]
    bars = ax.barh(names, values, color=["#999999", "#1f77b4"])
    ax.axvline(3000, color="red", linestyle="--", label="target 3,000/s")
    ax.bar_label(bars, labels=[f"{v:,.0f}/s" for v in values], padding=3)
    ax.set_xlabel("events/s (higher is better)")
    ax.set_title(f"Rewards throughput, {service['records']:,} records, ratio {ratio:.2f}")
    ax.set_xlim(0, max([*values, 3000]) * 1.3)
    ax.legend(loc="lower right")
    return finish_chart(fig, result, started)


async def scenario_scaling(infra: Infra, n: int, duplicates: float, counts: list[int]) -> ScenarioResult:
    result = ScenarioResult("5_scaling", "Scaling: rewards processes on a 4-partition topic",
                            target="throughput grows with processes (bounded by the machine's cores)")
    started = time.perf_counter()
    runs = [await run_service(infra, n, duplicates, processes=count, partitions=4) for count in counts]
    one = runs[0]["events_per_s"]
    result.figures = {"runs": runs}
    result.rows = [{"processes": r["processes"], "records": r["records"], "seconds": r["seconds"],
                    "events/s": r["events_per_s"], "speed-up": r["events_per_s"] / one,
                    "to first commit s": r["join_s"], "effects exact": r["exact"]} for r in runs]
    result.met = None  # no figure to meet; exactness is in the table
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r["processes"] for r in runs]
    ax.plot(xs, [r["events_per_s"] for r in runs], marker="o", label="measured")
    ax.plot(xs, [one * x for x in xs], linestyle=":", color="gray", label="linear")
    ax.set_xticks(xs)
    ax.set_xlabel("rewards processes (one consumer group, 4 partitions)")
    ax.set_ylabel("events/s")
    ax.set_title("Rewards throughput by process count")
    ax.legend()
    return finish_chart(fig, result, started)
