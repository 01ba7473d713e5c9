"""Fixtures of the referral integration tests: one running service per test module (real Kafka and
the MongoDB-protocol server), a settable clock, a reader of ``referral.events``, event helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer

from services.referral.bootstrap import build_app
from services.referral.handlers import Deps
from services.referral.settings import ReferralSettings
from shared.kafka import parse_event
from tests.support.events import Producer, cloud_event
from tests.support.services import RunningService, eventually, running, settings_for, token


class SettableClock:
    """The service's "now": real time unless a test pins it."""

    def __init__(self) -> None:
        self.pinned: datetime | None = None

    def __call__(self) -> datetime:
        return self.pinned or datetime.now(UTC)

    def set(self, moment: datetime | None) -> None:
        self.pinned = moment


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def registered(user_id: str, *, at: datetime | None = None, event_id: str | None = None,
               **data: Any) -> dict[str, Any]:
    return cloud_event("user.registered", {"user_id": user_id, "registered_at": rfc3339(at or datetime.now(UTC)),
                                           **data}, event_id=event_id, source="urn:shop:users")


def completed(user_id: str, order_id: str | None = None, *, amount: int = 5000, at: datetime | None = None,
              event_id: str | None = None) -> dict[str, Any]:
    return cloud_event("order.completed", {
        "order_id": order_id or uid("o"), "user_id": user_id, "amount": amount, "currency": "CNY",
        "completed_at": rfc3339(at or datetime.now(UTC))}, event_id=event_id, source="urn:shop:orders")


def refunded(user_id: str, order_id: str, *, full: bool = True, amount: int = 5000,
             at: datetime | None = None) -> dict[str, Any]:
    return cloud_event("order.refunded", {
        "order_id": order_id, "user_id": user_id, "refunded_amount": amount, "full": full,
        "refunded_at": rfc3339(at or datetime.now(UTC))}, source="urn:shop:orders")


@dataclass
class PublishedEvents:
    """Everything the service published to ``referral.events``, read back from Kafka."""

    records: list[Any] = field(default_factory=list)

    def of(self, event_type: str | None = None, **data: Any) -> list[dict[str, Any]]:
        found = []
        for record in self.records:
            event = json.loads(record.value)
            if "type" not in event:
                continue
            if event_type is not None and event["type"] != event_type:
                continue
            if all(event["data"].get(k) == v for k, v in data.items()):
                found.append(event)
        return found

    async def wait(self, event_type: str, count: int = 1, timeout: float = 30, **data: Any) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]] | None:
            found = self.of(event_type, **data)
            return found if len(found) >= count else None

        return await eventually(cast(Any, enough), timeout=timeout, message=f"{count} x {event_type} {data}")

    async def settle(self, seconds: float = 1.5) -> None:
        """Give anything that should NOT be published a chance to show up."""
        await asyncio.sleep(seconds)


@dataclass
class Harness:
    svc: RunningService
    deps: Deps
    clock: SettableClock
    events: PublishedEvents
    producer: Producer
    settings: ReferralSettings

    @property
    def client(self) -> Any:
        return self.svc.client

    async def send_user(self, event: dict[str, Any]) -> None:
        await self.producer.send("users.events", event)

    async def send_order(self, event: dict[str, Any]) -> None:
        await self.producer.send("orders.events", event)

    async def handle(self, event: dict[str, Any]) -> None:
        """Run the service's own typed handler directly (as a second replica would)."""
        parsed = parse_event(json.dumps(event).encode())
        consumer = next(c for c in self.svc.runtime.consumers if event["type"] in c.handlers)
        await consumer.handlers[event["type"]](parsed)  # type: ignore[arg-type]

    async def code_of(self, user_id: str) -> str:
        response = await self.client.post("/v1/referral-codes", headers=token(user_id))
        assert response.status_code in (200, 201), response.text
        code: str = response.json()["code"]
        return code

    async def bind(self, user_id: str, code: str) -> Any:
        return await self.client.post("/v1/referrals", json={"code": code}, headers=token(user_id))

    async def me(self, user_id: str) -> dict[str, Any]:
        response = await self.client.get("/v1/me/referrals", headers=token(user_id))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_binding(self, invitee_id: str) -> dict[str, Any]:
        binding: dict[str, Any] = await eventually(cast(Any, lambda: self.deps.store.binding_of(invitee_id)),
                                                   message=f"binding of {invitee_id}")
        return binding

    async def wait_registration(self, user_id: str) -> dict[str, Any]:
        registration: dict[str, Any] = await eventually(cast(Any, lambda: self.deps.store.registration_of(user_id)),
                                                        message=f"registration of {user_id}")
        return registration

    @contextlib.contextmanager
    def settings_override(self, **values: Any) -> Iterator[None]:
        previous = {name: getattr(self.settings, name) for name in values}
        for name, value in values.items():
            setattr(self.settings, name, value)
        try:
            yield
        finally:
            for name, value in previous.items():
                setattr(self.settings, name, value)


async def _collect(bootstrap: str, topic: str, sink: PublishedEvents, ready: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, metadata_max_age_ms=1000)
    await consumer.start()
    ready.set()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                sink.records.extend(records)
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def harness(infra: Any) -> AsyncIterator[Harness]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    settings = settings_for(ReferralSettings, infra, namespace)
    clock = SettableClock()
    sink = PublishedEvents()
    ready = asyncio.Event()
    async with running(partial(build_app, clock=clock), settings) as svc, \
            Producer(infra.bootstrap_servers, settings.topic_prefix) as producer:
        # Make sure the output topic exists before the reader subscribes.
        await producer.send_raw("referral.events", b'{"warmup": true}', key="warmup")
        collector = asyncio.create_task(_collect(infra.bootstrap_servers, settings.topic("referral.events"),
                                                 sink, ready))
        await ready.wait()
        try:
            yield Harness(svc, svc.app.state.referral, clock, sink, producer, settings)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector


@pytest.fixture(autouse=True)
def _real_time(harness: Harness) -> Iterator[None]:
    harness.clock.set(None)
    yield
    harness.clock.set(None)


DAY = timedelta(days=1)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ms(text: str) -> datetime:
    """An RFC 3339 time at the store's precision (milliseconds)."""
    moment = ts(text)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def drained(harness: Harness, timeout: float = 60) -> None:
    """Wait until the service has consumed and committed everything on its topics."""

    async def caught_up() -> bool:
        for subscriber in harness.svc.runtime.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            assert consumer is not None
            partitions = list(consumer.assignment())
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                if (await consumer.committed(tp) or 0) < ends[tp]:
                    return False
        return True

    await eventually(caught_up, timeout=timeout, interval=0.2, message="consumers caught up")
