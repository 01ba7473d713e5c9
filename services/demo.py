"""Demo data for ``make run`` / ``make up``: a few users registered through Kafka, as the user
system would send them. Safe to run again: events carry fixed ids, so replays change nothing."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

DEMO_USERS = ("demo-alice", "demo-bob", "demo-carol", "demo-dave", "demo-erin")


def _event(event_type: str, event_id: str, data: dict[str, object]) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "urn:pinwheel:demo", "type": event_type,
                       "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                       "datacontenttype": "application/json", "data": data}).encode()


async def _seed(bootstrap: str, prefix: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for user in DEMO_USERS:
            value = _event("user.registered", f"demo-registered-{user}",
                           {"user_id": user, "registered_at": datetime.now(UTC).isoformat()})
            await producer.send_and_wait(prefix + "users.events", value, key=user.encode())
    finally:
        await producer.stop()


def seed(env: dict[str, str]) -> None:
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    asyncio.run(_seed(bootstrap, os.environ.get("PINWHEEL_TOPIC_PREFIX", "")))
    print(f"[pinwheel] demo data: registered {', '.join(DEMO_USERS)}", flush=True)
