"""The wiring proven end to end on real Kafka and a real MongoDB-protocol server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from asgi_lifespan import LifespanManager
from pymongo import AsyncMongoClient

from services.groupbuy.bootstrap import build_app as build_groupbuy
from services.groupbuy.settings import GroupbuySettings
from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from services.rewards.bootstrap import build_app as build_rewards
from services.rewards.settings import RewardsSettings
from shared.inbox import redeliveries
from shared.kafka import H_ERROR, H_OFFSET, H_REASON, H_TOPIC
from tests.support.crashing_consumer import start_crashing
from tests.support.events import Producer, order_completed, user_registered
from tests.support.services import eventually, redelivered, running, settings_for, token

pytestmark = pytest.mark.integration

SERVICES = {
    "referral": (build_referral, ReferralSettings, "users.events", user_registered),
    "groupbuy": (build_groupbuy, GroupbuySettings, "orders.events", order_completed),
    "rewards": (build_rewards, RewardsSettings, "orders.events", order_completed),
}


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


@pytest.mark.parametrize("service", list(SERVICES))
async def test_cloud_event_from_plain_aiokafka_reaches_the_subscriber_and_is_stored(infra, namespace, service):
    build_app, settings_cls, topic, make_event = SERVICES[service]
    settings = settings_for(settings_cls, infra, namespace)
    event = make_event(f"u-{namespace}")
    async with running(build_app, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await p.send(topic, event)
        stored = await eventually(lambda: svc.db.inbox.find_one({"_id": event["id"]}), message="event stored")
        assert stored["type"] == event["type"]
        assert await redeliveries(svc.db, event["id"]) == 0


async def test_malformed_record_goes_to_the_dlq_with_its_reason_and_the_next_good_one_is_processed(
        infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    bad_bytes = b'{"specversion": "1.0", "id": "bad-1", "type": "user.registered", "data": {"user_id": 5'
    wrong_type = user_registered("u-x")
    wrong_type["data"]["registered_at"] = "yesterday"
    good = user_registered(f"u-{namespace}")
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await p.send_raw("users.events", bad_bytes, key="k1", headers=[("origin", b"test")])
        await p.send("users.events", wrong_type, key="k1")
        await p.send("users.events", good, key="k1")
        await eventually(lambda: svc.db.inbox.find_one({"_id": good["id"]}), message="good event stored")
        assert await svc.db.inbox.find_one({"_id": wrong_type["id"]}) is None

    dead = await read_topic(infra.bootstrap_servers, settings.topic("users.events.dlq"), 2)
    assert [r.value for r in dead] == [bad_bytes, json.dumps(wrong_type).encode()]
    first, second = (dict((k, v.decode()) for k, v in r.headers) for r in dead)
    assert first[H_REASON] == "invalid_json" and first["origin"] == "test"
    assert first[H_TOPIC] == settings.topic("users.events") and first[H_OFFSET].isdigit()
    assert second[H_REASON] == "invalid_event" and "registered_at" in second[H_ERROR]
    assert dead[0].key == b"k1"


async def test_consumer_killed_after_storing_but_before_committing_reprocesses_without_a_second_effect(
        infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    event = user_registered(f"u-{namespace}")
    crashing = await start_crashing("referral", settings, infra)
    try:
        async with Producer(infra.bootstrap_servers, settings.topic_prefix) as producer:
            await producer.send("users.events", event)
        return_code = await asyncio.wait_for(crashing.wait(), 60)
    finally:
        if crashing.returncode is None:
            crashing.kill()
    assert return_code == -9, "the consumer should have died by SIGKILL inside the handler"

    # read the store before any consumer runs again: the effect is there, the offset is not committed
    async with AsyncMongoClient(infra.mongodb_uri) as client:
        first = await client[settings.mongodb_database].inbox.find_one({"_id": event["id"]})
        seen_again = await redeliveries(client[settings.mongodb_database], event["id"])
    assert first is not None and seen_again == 0, "the effect was stored before the crash"

    async with running(build_referral, settings) as svc:
        await eventually(lambda: redelivered(svc.db, event["id"], 1),
                         message="the uncommitted event is delivered again")
        assert await svc.db.inbox.count_documents({"_id": event["id"]}) == 1
        consumer = svc.runtime.broker.subscribers[0].consumer
        assert consumer is not None
        partitions = list(consumer.assignment())

        async def committed_past_event() -> bool:
            offsets = [await consumer.committed(tp) for tp in partitions]
            return sum(o or 0 for o in offsets) >= 1

        await eventually(committed_past_event, message="offset committed after the effect")


async def test_readyz_turns_red_when_the_store_stops_and_green_again_after(infra, namespace):
    if infra.store is None:
        pytest.skip("the store is external (MONGODB_URI or a container); this test stops and starts our own")
    settings = settings_for(GroupbuySettings, infra, namespace)
    async with running(build_groupbuy, settings) as svc:
        ready = await svc.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"mongodb": True, "kafka": True}
        infra.store.stop_front()
        try:
            red = await svc.client.get("/readyz")
            assert red.status_code == 503
            assert red.json()["checks"]["mongodb"] is False
            assert (await svc.client.get("/healthz")).status_code == 200, "alive even when not ready"
        finally:
            infra.store.start_front()
        green = await eventually(lambda: _ready(svc), timeout=30, message="ready again")
        assert green


async def _ready(svc: Any) -> bool:
    response = await svc.client.get("/readyz")
    return response.status_code == 200



async def test_a_service_started_while_the_store_is_down_serves_health_and_becomes_ready_later(infra, namespace):
    if infra.store is None:
        pytest.skip("the store is external (MONGODB_URI or a container); this test stops and starts our own")
    settings = settings_for(ReferralSettings, infra, namespace)
    app = build_referral(settings)
    infra.store.stop_front()
    try:
        async with LifespanManager(app, startup_timeout=30), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200
            red = await client.get("/readyz")
            assert red.status_code == 503 and red.json()["checks"]["mongodb"] is False
            refused = await client.get("/v1/me/referrals", headers=token("u1"))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
            await asyncio.to_thread(infra.store.start_front)
            assert await eventually(lambda: _ready_client(client), timeout=60, message="ready when the store is back")
    finally:
        await asyncio.to_thread(infra.store.start_front)


async def _ready_client(client: Any) -> bool:
    return (await client.get("/readyz")).status_code == 200
