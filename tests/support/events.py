"""Build and produce CloudEvents the way other systems do: plain aiokafka, JSON bytes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def cloud_event(event_type: str, data: dict[str, Any], *, event_id: str | None = None,
                source: str = "urn:test", time: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": source, "type": event_type,
            "time": time or now_rfc3339(), "datacontenttype": "application/json", "data": data, **extra}


def user_registered(user_id: str, **data: Any) -> dict[str, Any]:
    return cloud_event("user.registered", {"user_id": user_id, "registered_at": now_rfc3339(), **data},
                       source="urn:shop:users")


def order_completed(user_id: str, order_id: str | None = None, amount: int = 5000, **data: Any) -> dict[str, Any]:
    return cloud_event("order.completed", {
        "order_id": order_id or f"o-{uuid.uuid4().hex[:10]}", "user_id": user_id, "amount": amount,
        "currency": "CNY", "completed_at": now_rfc3339(), **data}, source="urn:shop:orders")


def order_refunded(user_id: str, order_id: str, refunded_amount: int = 5000, full: bool = True,
                   **data: Any) -> dict[str, Any]:
    return cloud_event("order.refunded", {
        "order_id": order_id, "user_id": user_id, "refunded_amount": refunded_amount, "full": full,
        "refunded_at": now_rfc3339(), **data}, source="urn:shop:orders")


class Producer:
    """A plain aiokafka producer, as the users and orders systems would run."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str = "") -> None:
        self.prefix = topic_prefix
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send_raw(self, topic: str, value: bytes | None, key: str | None = None,
                       headers: Sequence[tuple[str, bytes]] = ()) -> None:
        await self._producer.send_and_wait(self.prefix + topic, value, key=key.encode() if key else None,
                                           headers=list(headers) or None)

    async def send(self, topic: str, event: dict[str, Any], key: str | None = None) -> None:
        if key is None:
            key = str(event.get("data", {}).get("user_id") or event.get("subject") or "")
        await self.send_raw(topic, json.dumps(event).encode(), key=key)


async def read_all(bootstrap_servers: str, topic: str) -> list[dict[str, Any]]:
    """Every event now on ``topic`` (all partitions, up to their current end), decoded."""
    from shared.kafka import read_topic

    return [json.loads(record.value) for record in await read_topic(bootstrap_servers, topic)]
