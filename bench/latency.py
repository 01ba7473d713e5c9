"""Scenario 2: end-to-end latency, event produced -> coupon visible through the REST API.

A rewards process runs; the bench produces ``referral.qualified`` events (each grants its inviter
one coupon) at a steady rate, one new inviter per event. For a sample of them (``--latency-sample``,
2% by default, to keep the polling from being the load) a poller calls ``GET /v1/me/coupons`` as the
inviter from the moment the event is handed to the producer until the coupon is listed. Latency =
that moment to the first response listing it (so it includes the producer's own batching, the
broker, the consumer's poll, the insert and one HTTP request). The poll interval bounds the
resolution. Events are sent on schedule (``send`` without waiting for the ack); if the producer falls
behind the schedule, the achieved rate is what is reported.

Baseline, same schedule and sampling just before: a plain aiokafka consumer inserting each poll's
records, and pollers reading the store directly; what the infrastructure itself gives at this rate,
under whatever else runs on the box at the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError

from bench.common import (
    Infra,
    ScenarioResult,
    auth,
    create_topics,
    drop_database,
    drop_topics,
    encode,
    finish_chart,
    namespace,
    percentile,
    plot_latency_cdf,
    pyplot,
    qualified,
    service_processes,
)
from bench.http import HttpPool
from shared.events import catalog

Visible = Callable[[str], Awaitable[bool]]


async def _drive(infra: Infra, topic: str, ns: str, visible: Visible, rate: float, seconds: float,
                 sample: float, poll_ms: float) -> dict[str, Any]:
    """Produce ``referral.qualified`` on schedule and time the sampled ones until ``visible``."""
    total = int(rate * seconds)
    every = max(1, round(1 / sample)) if sample > 0 else total + 1
    latencies: list[float] = []
    missing = 0
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all", linger_ms=1)
    await producer.start()
    try:
        # warm-up: the consumer group has joined once a first event is visible
        warm = f"warm{ns}"
        await producer.send_and_wait(topic, encode(qualified(warm, "w")), key=warm.encode())
        await _until(visible, warm, time.perf_counter(), 30, poll_ms)

        async def track(inviter: str, sent_at: float) -> None:
            nonlocal missing
            seen = await _until(visible, inviter, sent_at, 30, poll_ms)
            if seen is None:
                missing += 1
            else:
                latencies.append(seen)

        trackers: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inviter = f"lat{i}-{ns}"
            sent_at = time.perf_counter()
            await producer.send(topic, encode(qualified(inviter, f"i{i}")), key=inviter.encode())
            if i % every == 0:
                trackers.append(asyncio.create_task(track(inviter, sent_at)))
        sent_seconds = time.perf_counter() - started
        await asyncio.gather(*trackers)
    finally:
        await producer.stop()
    return {"events": total, "target_rate": rate, "achieved_rate": total / sent_seconds, "sampled": len(latencies),
            "missing": missing, "poll_ms": poll_ms, "latencies_ms": [x * 1000 for x in latencies],
            "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies, default=0) * 1000}


async def _topics(infra: Infra, ns: str) -> str:
    await create_topics(infra.bootstrap_servers, [f"{ns}.{t}" for t in (catalog.REFERRAL, catalog.GROUPBUY,
                                                                        catalog.ORDERS)], 4)
    return f"{ns}.{catalog.REFERRAL}"


async def run_latency(infra: Infra, rate: float, seconds: float, sample: float,
                      poll_ms: float = 10) -> dict[str, Any]:
    """The rewards service: visible = listed by ``GET /v1/me/coupons`` as the inviter."""
    ns = namespace("lat")
    topic = await _topics(infra, ns)
    try:
        async with service_processes("rewards", infra, ns) as (proc,), HttpPool(proc.url, 64, timeout=10) as client:

            async def listed(user: str) -> bool:
                response = await client.get("/v1/me/coupons", auth(user))
                return response.status_code == 200 and bool(response.json().get("coupons"))

            return await _drive(infra, topic, ns, listed, rate, seconds, sample, poll_ms)
    finally:
        await drop_database(infra, f"{ns}_rewards")
        await drop_topics(infra, ns)


async def run_raw_latency(infra: Infra, rate: float, seconds: float, sample: float,
                          poll_ms: float = 10) -> dict[str, Any]:
    """Baseline: a plain aiokafka consumer (``getmany``, one ``insert_many`` per poll, commit after)
    and pollers reading the store directly (``find_one`` by key): the floor the infrastructure
    gives at this rate on this box, measured the same way, minutes apart."""
    ns = namespace("latraw")
    topic = await _topics(infra, ns)
    client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongodb_uri)
    collection = client[f"{ns}_raw"]["records"]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=infra.bootstrap_servers, group_id=f"{ns}-raw",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=10, max_records=1000)
            docs = [{"_id": r.key.decode(), "event": json.loads(r.value)} for rs in batch.values() for r in rs]
            if docs:
                with contextlib.suppress(BulkWriteError):
                    await collection.insert_many(docs, ordered=False)
                await consumer.commit()

    async def stored(user: str) -> bool:
        return await collection.find_one({"_id": user}, {"_id": 1}) is not None

    task = asyncio.create_task(consume())
    try:
        return await _drive(infra, topic, ns, stored, rate, seconds, sample, poll_ms)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        await client.close()
        await drop_database(infra, f"{ns}_raw")
        await drop_topics(infra, ns)


async def _until(visible: Visible, user: str, since: float, timeout: float,
                 poll_ms: float, fine_for: float = 0.15, coarse_ms: float = 50,
                 coarsest_ms: float = 250) -> float | None:
    """Poll every ``poll_ms`` for the first ``fine_for`` seconds (up to the target), then every
    tenth of the time elapsed (``coarse_ms`` to ``coarsest_ms``: a reading stays within ~10%).
    Each GET costs the service ~1–2 ms of CPU, and the pollers of slow events live longest: at a
    fixed 5 ms, and still at 50 ms, they became most of the service's load once latency passed
    ~150 ms, which made events slower still (the same build gave p99 0.1 s or 0.9–2.6 s)."""
    deadline = since + timeout
    while time.perf_counter() < deadline:
        if await visible(user):
            return time.perf_counter() - since
        elapsed = time.perf_counter() - since
        interval_ms = poll_ms if elapsed <= fine_for else min(coarsest_ms, max(coarse_ms, elapsed * 100))
        await asyncio.sleep(interval_ms / 1000)
    return None


async def scenario_latency(infra: Infra, rate: float, seconds: float, sample: float) -> ScenarioResult:
    result = ScenarioResult("2_e2e_latency", "End-to-end latency: referral.qualified produced -> coupon in "
                            "GET /v1/me/coupons", target="p99 ≤ 150 ms at 500 events/s")
    started = time.perf_counter()
    raw = await run_raw_latency(infra, rate, seconds, sample)
    run = await run_latency(infra, rate, seconds, sample)
    result.figures = {**{k: v for k, v in run.items() if k != "latencies_ms"},
                      "baseline": {k: v for k, v in raw.items() if k != "latencies_ms"}}
    result.rows = [{"run": name, "rate asked/s": r["target_rate"], "rate achieved/s": r["achieved_rate"],
                    "events": r["events"], "sampled": r["sampled"], "p50 ms": r["p50_ms"],
                    "p95 ms": r["p95_ms"], "p99 ms": r["p99_ms"], "max ms": r["max_ms"],
                    "never visible": r["missing"]}
                   for name, r in (("rewards service, GET /v1/me/coupons", run),
                                   ("raw baseline: getmany + insert_many, find_one", raw))]
    result.met = run["p99_ms"] <= 150 and run["missing"] == 0 and run["achieved_rate"] >= 0.95 * rate
    result.notes.append(f"latency sampled on every {max(1, round(1 / sample))}th event, polled every "
                        f"{run['poll_ms']:.0f} ms for 150 ms (the resolution up to the target), then every "
                        "tenth of the time elapsed (50–250 ms); "
                        f"p99 service/raw = {run['p99_ms'] / max(raw['p99_ms'], 1e-9):.1f}×")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_latency_cdf(ax, [(f"{name}: p99 {r['p99_ms']:.0f} ms", r["latencies_ms"], color)
                          for name, r, color in (("raw baseline", raw, "#999999"),
                                                 ("rewards service", run, "#1f77b4"))],
                     150, "produced -> visible (ms, log scale)", "% of sampled events")
    ax.set_title(f"E2E latency at {run['achieved_rate']:.0f} events/s")
    ax.legend(loc="lower right")
    return finish_chart(fig, result, started)
