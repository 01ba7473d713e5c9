"""Operator tools against real Kafka and the real store: DLQ inspect/redrive, replay, lag."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.ops.dlq import read_all, redrive, select
from services.ops.lag import consumer_lag
from services.ops.replay import replay
from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from shared.kafka import H_REASON, H_TOPIC
from tests.support.events import Producer, user_registered
from tests.support.services import eventually, redelivered, running, settings_for

pytestmark = pytest.mark.integration


def overrides(settings: ReferralSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in (
        "kafka_bootstrap_servers", "mongodb_uri", "topic_prefix", "mongodb_database", "consumer_group",
        "environment", "jwt_secret")}


async def test_dead_letters_are_listed_with_reasons_and_a_redriven_one_keeps_its_id(infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    fixed = user_registered(f"u-{namespace}")
    topic = settings.topic("users.events")
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers) as producer:
        # as if a bug had dead-lettered a good event, plus a truly broken record
        await producer.send_raw(topic + ".dlq", json.dumps(fixed).encode(), key=fixed["data"]["user_id"],
                                headers=[(H_REASON, b"handler_failed"), (H_TOPIC, topic.encode()),
                                         ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
        await producer.send_raw(topic, b"{broken", key="k")
        letters = await eventually(lambda: _letters(infra.bootstrap_servers, topic, 2), message="two dead letters")
        reasons = sorted(letter.reason for letter in letters)
        assert reasons == ["handler_failed", "invalid_json"]
        chosen = select(letters, reason="handler_failed")
        assert [letter.event_summary()["id"] for letter in chosen] == [fixed["id"]]
        assert await redrive(infra.bootstrap_servers, chosen) == 1
        stored = await eventually(lambda: svc.db.inbox.find_one({"_id": fixed["id"]}), message="redriven event handled")
        assert stored["type"] == "user.registered"
        # redriving the same dead letter again changes nothing: same id, idempotent consumer
        await redrive(infra.bootstrap_servers, chosen)
        await eventually(lambda: redelivered(svc.db, fixed["id"], 1),
                         message="second redrive seen as a redelivery")
        assert await svc.db.inbox.count_documents({"_id": fixed["id"]}) == 1


async def _letters(bootstrap: str, topic: str, count: int):
    letters = await read_all(bootstrap, topic)
    return letters if len(letters) >= count else None


async def test_replay_of_the_history_applies_nothing_new_and_restores_what_was_lost(infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    started = datetime.now(UTC) - timedelta(seconds=5)
    events = [user_registered(f"u-{namespace}-{i}") for i in range(30)]
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        for event in events:
            await p.send("users.events", event)
        await eventually(lambda: _count_inbox(svc.db, len(events)), message="all events handled")

        dry = await replay("referral", started, dry_run=True, **overrides(settings))
        assert dry.events_read == len(events)
        assert dry.events_with_effects == 0 and dry.duplicates_skipped == len(events)
        assert dry.would_publish == {}

        full = await replay("referral", started, **overrides(settings))
        assert (full.events_read, full.effects_applied, full.failures) == (len(events), 0, 0)
        assert full.duplicates_skipped == len(events)

        # an operator lost one event's effects: dry run says so without writing, a replay restores it
        lost = events[7]
        await svc.db.inbox.delete_one({"_id": lost["id"]})
        dry = await replay("referral", started, dry_run=True, **overrides(settings))
        assert dry.events_with_effects == 1
        assert await svc.db.inbox.find_one({"_id": lost["id"]}) is None, "a dry run writes nothing"
        fixed = await replay("referral", started, **overrides(settings))
        assert fixed.events_with_effects == 1
        assert await svc.db.inbox.find_one({"_id": lost["id"]}) is not None

        # a range after the events holds nothing
        later = await replay("referral", datetime.now(UTC) + timedelta(minutes=1), **overrides(settings))
        assert later.events_read == 0


async def _count_inbox(db, expected: int) -> bool:
    return await db.inbox.count_documents({}) >= expected


async def test_lag_reports_committed_and_end_offsets(infra, namespace, monkeypatch):
    settings = settings_for(ReferralSettings, infra, namespace)
    for key, value in {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "MONGODB_URI": infra.mongodb_uri,
                       "PINWHEEL_TOPIC_PREFIX": settings.topic_prefix,
                       "REFERRAL_CONSUMER_GROUP": settings.consumer_group}.items():
        monkeypatch.setenv(key, value)
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        for i in range(5):
            await p.send("users.events", user_registered(f"u-{namespace}-{i}"))
        await eventually(lambda: _count_inbox(svc.db, 5), message="handled")

        async def caught_up():
            rows = [r for r in await consumer_lag(("referral",)) if r.topic == settings.topic("users.events")]
            return rows if sum(r.end for r in rows) == 5 and sum(r.lag for r in rows) == 0 else None

        rows = await eventually(caught_up, message="lag zero after handling")
        assert {r.group for r in rows} == {settings.consumer_group}
