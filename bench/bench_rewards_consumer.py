"""Throughput of the rewards consumer: N rewarding events with 10% duplicates, through Kafka.

Not a test: it prints figures. The service runs in-process on the Kafka and store named by
KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI, in a throw-away namespace. The events are produced first
(``referral.qualified`` and ``groupbuy.group_formed``, one coupon each, plus duplicates), then the
service starts and the time until every reward is stored is measured (so the figure is the
consumer's, not the producer's). It checks that duplicates granted nothing.

    uv run python bench/bench_rewards_consumer.py --events 2000 --duplicates 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager

from services.rewards.bootstrap import build_app
from services.rewards.settings import RewardsSettings


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _events(n: int) -> list[tuple[str, str, dict[str, object]]]:
    events: list[tuple[str, str, dict[str, object]]] = []
    for i in range(n):
        if i % 2:
            data: dict[str, object] = {
                "inviter_id": f"inv{i % 97}", "invitee_id": f"u{i}", "order_id": f"o{i}", "qualified_count": 1,
                "qualified_at": _now(), "source_event_id": str(uuid.uuid4())}
            events.append(("referral.events", f"inv{i % 97}", {"type": "referral.qualified", "data": data}))
        else:
            data = {"group_id": f"g{i}", "campaign_id": "c1", "initiator_id": f"u{i}",
                    "tier": {"size": 2, "percent_off": 20}, "list_price": 1000, "members": [], "formed_at": _now()}
            events.append(("groupbuy.events", f"g{i}", {"type": "groupbuy.group_formed", "data": data}))
    for _, _, event in events:
        event.update({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "urn:bench", "time": _now()})
    return events


async def _rewards_stored(db: Any, at_least: int, poll: float) -> int:
    for _ in itertools.count():
        stored: int = await db.coupons.count_documents({})
        if stored >= at_least:
            return stored
        await asyncio.sleep(poll)
    raise AssertionError("unreachable")


async def main(n: int, duplicates: float) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = RewardsSettings(topic_prefix=f"{namespace}.", mongodb_database=f"{namespace}_rewards",
                               consumer_group=f"{namespace}-rewards", environment="test",
                               log_level="WARNING")
    events = _events(n)
    copies = events + random.sample(events, int(n * duplicates))
    random.shuffle(copies)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for topic, key, event in copies:
            await producer.send(settings.topic(topic), json.dumps(event).encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    app = build_app(settings)
    db = app.state.runtime.db
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        joined = time.perf_counter()
        await _rewards_stored(db, 1, 0.05)
        started = time.perf_counter()  # the group has joined and the first reward is stored
        stored = await _rewards_stored(db, n, 0.2)
        elapsed = time.perf_counter() - started
        join = started - joined
        await asyncio.sleep(1)
        final = await db.coupons.count_documents({})
        await app.state.runtime.mongo.drop_database(settings.mongodb_database)
    print(f"{len(copies)} events ({len(copies) - n} duplicates) in {elapsed:.1f}s after the group "
          f"joined ({join:.1f}s): {len(copies) / elapsed:.0f} events/s; "
          f"rewards {final} (expected {n}, {stored} at the end of timing)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--duplicates", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.duplicates))
