"""Fixtures for the group-buy integration tests: the service in-process on the real servers, with a
settable clock and the scheduler driven by the tests (``gb.run_due()``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from services.groupbuy.bootstrap import build_app
from services.groupbuy.handlers import to_millis
from services.groupbuy.settings import GroupbuySettings
from shared.clock import SettableClock
from shared.events.envelope import utcnow
from tests.support.events import Producer, order_completed
from tests.support.services import running, settings_for, token

ADMIN = token("ops", "admin")


class GroupbuyHarness:
    def __init__(self, svc: Any, clock: SettableClock, settings: GroupbuySettings, producer: Producer,
                 bootstrap: str) -> None:
        self.svc = svc
        self.client = svc.client
        self.db = svc.db
        self.clock = clock
        self.settings = settings
        self.producer = producer
        self.bootstrap = bootstrap
        self.groupbuy = svc.app.state.groupbuy

    async def campaign(self, **overrides: Any) -> dict[str, Any]:
        now = self.clock.now()
        body: dict[str, Any] = {
            "sku": "tea-500g", "list_price": 10000,
            "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
            "starts_at": (now - timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(days=7)).isoformat(),
            "stock": 100, **overrides}
        response = await self.client.post("/v1/campaigns", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def open(self, campaign_id: str, user: str) -> dict[str, Any]:
        response = await self.client.post(f"/v1/campaigns/{campaign_id}/groups", headers=token(user))
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def join(self, group_id: str, user: str) -> Any:
        return await self.client.post(f"/v1/groups/{group_id}/members", headers=token(user))

    async def view(self, group_id: str, user: str = "viewer") -> dict[str, Any]:
        response = await self.client.get(f"/v1/groups/{group_id}", headers=token(user))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def payment(self, user: str, group_id: str | None, order_id: str, amount: int = 7000,
                completed_at: Any = None, **extra: Any) -> dict[str, Any]:
        when = completed_at or self.clock.now()
        event = order_completed(user, order_id, amount=amount, **extra)
        if group_id is not None:
            event["data"]["group_id"] = group_id
        event["data"]["completed_at"] = when.isoformat().replace("+00:00", "Z")
        return event

    async def pay(self, user: str, group_id: str | None, order_id: str, **kwargs: Any) -> dict[str, Any]:
        event = self.payment(user, group_id, order_id, **kwargs)
        await self.producer.send("orders.events", event)
        return event

    async def events(self, predicate: Any = None, timeout: float = 20.0, idle: float = 1.0) -> list[dict[str, Any]]:
        """Every event on groupbuy.events so far (once ``predicate(events)`` holds, if given)."""
        consumer = AIOKafkaConsumer(self.settings.topic("groupbuy.events"), bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
        await consumer.start()
        found: list[dict[str, Any]] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            last_new = loop.time()
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        found.append(json.loads(record.value))
                        last_new = loop.time()
                if predicate is None and loop.time() - last_new > idle:
                    break
                if predicate is not None and predicate(found):
                    break
        finally:
            await consumer.stop()
        if predicate is not None:
            assert predicate(found), f"events not as expected: {[e['type'] for e in found]}"
        return found


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == event_type]


@pytest.fixture
async def gb(infra: Any, namespace: str) -> AsyncIterator[GroupbuyHarness]:
    clock = SettableClock(to_millis(utcnow()))
    # join_rate_limit: the race tests have one user join 40 times at once (the limit has its own tests)
    settings = settings_for(GroupbuySettings, infra, namespace, scheduler_enabled=False, settle_grace_seconds=0,
                            join_rate_limit_per_minute=10_000)
    async with running(partial(build_app, clock=clock), settings) as svc, \
            Producer(infra.bootstrap_servers, settings.topic_prefix) as producer:
        yield GroupbuyHarness(svc, clock, settings, producer, infra.bootstrap_servers)
