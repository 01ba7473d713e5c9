"""Why scenario 2 was bimodal: aiokafka's fetch to idle topics holds back the busy one.

aiokafka keeps one fetch in flight per broker, and leaves out of it the partitions whose records
the application has not taken yet. While a consumer handles a large poll, every partition of the
busy topic has records waiting, so the next fetch asks for the idle topics only; the broker holds
such a fetch for ``fetch_max_wait_ms`` (aiokafka's default: 500), and the busy partitions, taken
meanwhile, wait for it. The next poll is large again: a steady lag that never drains, started by
any hiccup. A service subscribes to several topics, most of them quiet most of the time.

Same script, same broker, side by side: a consumer subscribed to a busy topic (events at a steady
rate) and two idle ones, handling each poll at ~1.2 ms per record (the rewards service's cost on
this box), pauses once for 300 ms (a hiccup); per configuration, the produce-to-handled latency
after the hiccup, and how long until it is back under 50 ms.

    uv run python -m bench.fetch_wait [--rate 500] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Infra, create_topics, drop_topics, infra, namespace, percentile

HICCUP_AT = 2.0  # seconds into the run
HICCUP = 0.3
PER_RECORD = 0.0012  # seconds of handling per record


async def _run(found: Infra, *, fetch_max_wait_ms: int, idle_topics: bool, rate: float,
               seconds: float) -> dict[str, Any]:
    ns = namespace("fw")
    busy, idle = f"{ns}.busy", [f"{ns}.idle1", f"{ns}.idle2"]
    await create_topics(found.bootstrap_servers, [busy, *idle], 4)
    producer = AIOKafkaProducer(bootstrap_servers=found.bootstrap_servers, linger_ms=1)
    consumer = AIOKafkaConsumer(*([busy, *idle] if idle_topics else [busy]),
                                bootstrap_servers=found.bootstrap_servers, group_id=f"{ns}-g",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await producer.start()
    await consumer.start()
    latencies: list[tuple[float, float]] = []  # (handled at, latency), seconds since the start
    try:
        started = time.perf_counter()
        total = int(rate * seconds)

        async def produce() -> None:
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await producer.send(busy, struct.pack("d", time.perf_counter()), key=str(i % 64).encode())

        producing = asyncio.create_task(produce())
        hiccup_done = False
        while len(latencies) < total:
            batch = await consumer.getmany(timeout_ms=10, max_records=1000)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            now = time.perf_counter()
            pause = len(records) * PER_RECORD
            if not hiccup_done and now - started >= HICCUP_AT:
                pause, hiccup_done = pause + HICCUP, True
            await asyncio.sleep(pause)
            handled = time.perf_counter()
            latencies += [(handled - started, handled - struct.unpack("d", r.value)[0]) for r in records]
        await producing
    finally:
        await consumer.stop()
        await producer.stop()
        await drop_topics(found, ns)
    after = [lat for at, lat in latencies if at >= HICCUP_AT]
    late = [at for at, lat in latencies if at >= HICCUP_AT and lat > 0.05]
    return {"fetch_max_wait_ms": fetch_max_wait_ms, "idle_topics": idle_topics,
            "p50_ms": percentile(after, 50) * 1000, "p99_ms": percentile(after, 99) * 1000,
            "lagging_until_s": (max(late) - HICCUP_AT) if late else 0.0, "run_s": seconds}


async def _main(rate: float, seconds: float) -> list[dict[str, Any]]:
    with infra() as found:
        return [await _run(found, fetch_max_wait_ms=wait, idle_topics=idle, rate=rate, seconds=seconds)
                for wait, idle in ((500, True), (50, True), (500, False))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    rows = asyncio.run(_main(args.rate, args.seconds))
    for row in rows:
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
