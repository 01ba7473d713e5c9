"""The rewards service against the real servers: rules, coupons, ledger, budgets, exactly-once."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient

from services.ops.replay import committed_offsets, replay
from services.rewards import handlers
from services.rewards.adapters.store import LEDGER, entry_from, reserved_before_query
from services.rewards.bootstrap import build_app
from services.rewards.domain import ledger as ledger_rules
from services.rewards.domain.rules import coupon_code, reward_id
from services.rewards.settings import RewardsSettings
from shared.clock import ShiftedClock
from shared.events import CloudEvent
from shared.kafka import parse_event, read_topic
from shared.outbox import PublishMarks
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.crashing_consumer import start_crashing
from tests.support.events import Producer, cloud_event, now_rfc3339, order_completed, order_refunded
from tests.support.plans import scans_the_collection
from tests.support.services import eventually, running, settings_for, token

pytestmark = pytest.mark.integration

SERVICE = token("checkout", "service")
ADMIN = token("ops", "admin")


# ------------------------------------------------------------------ event builders (as the other services emit)


def bound(inviter: str, invitee: str, device: str | None = None) -> dict[str, Any]:
    data = {"inviter_id": inviter, "invitee_id": invitee, "code": "C" + inviter[:8], "bound_at": now_rfc3339(),
            "channel": "app"}
    if device:
        data["device_id"] = device
    return cloud_event("referral.bound", data, source="urn:pinwheel:referral")


def qualified(inviter: str, invitee: str, count: int, order_id: str | None = None) -> dict[str, Any]:
    return cloud_event("referral.qualified", {
        "inviter_id": inviter, "invitee_id": invitee, "order_id": order_id or f"o-{uuid.uuid4().hex[:8]}",
        "qualified_count": count, "qualified_at": now_rfc3339(), "source_event_id": str(uuid.uuid4())},
        source="urn:pinwheel:referral")


def disqualified(inviter: str, invitee: str, count: int) -> dict[str, Any]:
    return cloud_event("referral.disqualified", {
        "inviter_id": inviter, "invitee_id": invitee, "order_id": "o-x", "reason": "full_refund_in_hold",
        "qualified_count": count, "disqualified_at": now_rfc3339(), "source_event_id": str(uuid.uuid4())},
        source="urn:pinwheel:referral")


def group_formed(initiator: str, group_id: str = "g-1") -> dict[str, Any]:
    return cloud_event("groupbuy.group_formed", {
        "group_id": group_id, "campaign_id": "camp-1", "initiator_id": initiator,
        "tier": {"size": 2, "percent_off": 20}, "list_price": 10000,
        "members": [{"user_id": initiator, "seat": 1, "order_id": "o-g1", "price": 8000}],
        "formed_at": now_rfc3339()}, source="urn:pinwheel:groupbuy")


TOPIC_OF = {"referral": "referral.events", "groupbuy": "groupbuy.events", "order": "orders.events"}


async def send(producer: Producer, event: dict[str, Any], key: str | None = None) -> None:
    data = event["data"]
    topic = TOPIC_OF[event["type"].split(".")[0]]
    default_key = data.get("inviter_id") or data.get("group_id") or data.get("user_id")
    await producer.send(topic, event, key=key or default_key)


def typed(event: dict[str, Any]) -> CloudEvent[Any]:
    parsed = parse_event(json.dumps(event).encode())
    assert isinstance(parsed, CloudEvent)
    return parsed


async def coupons_of(svc: Any, user: str) -> list[dict[str, Any]]:
    response = await svc.client.get("/v1/me/coupons", headers=token(user))
    assert response.status_code == 200, response.text
    coupons: list[dict[str, Any]] = response.json()["coupons"]
    return coupons


async def commissions_of(svc: Any, user: str) -> dict[str, Any]:
    response = await svc.client.get("/v1/me/commissions", headers=token(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def read_rewards_events(bootstrap: str, topic: str, want: int, timeout: float = 30) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(events) < want:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    events.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return events


async def ledger_is_consistent(db: Any, user: str) -> ledger_rules.LedgerState:
    """Rebuild the balance from the entries alone and compare with what each entry carries."""
    docs = [d async for d in db[LEDGER].find({"user_id": user}).sort("seq", 1)]
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1)), "no gap, no duplicate sequence number"
    rebuilt = ledger_rules.rebuild(entry_from(d) for d in docs)
    last = entry_from(docs[-1]).after if docs else ledger_rules.LedgerState()
    assert rebuilt == last
    assert rebuilt.balance == sum(d["amount"] for d in docs)
    return rebuilt


# ------------------------------------------------------------------ rules end to end


async def test_rewards_every_rule_end_to_end_with_events_published(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    ann, bob, cat = f"ann-{namespace}", f"bob-{namespace}", f"cat-{namespace}"
    welcome = bound(ann, bob, device="dev-1")
    q6 = qualified(ann, bob, 6)
    formed = group_formed(cat)
    async with running(build_app, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        for event in (welcome, q6, formed):
            await send(p, event)
        bobs = await eventually(lambda: _with_len(coupons_of(svc, bob), 2), message="welcome pack")
        assert sorted((c["kind"], c["value"], c["threshold"], c["status"]) for c in bobs) == [
            ("amount_off", 2000, 5000, "available"), ("free_shipping", 0, 0, "available")]
        assert all(c["expires_at"][:10] >= c["issued_at"][:10] for c in bobs)
        anns = await eventually(lambda: _with_len(coupons_of(svc, ann), 1), message="inviter coupon")
        assert (anns[0]["value"], anns[0]["threshold"], anns[0]["rule"]) == (2000, 0, "inviter_coupon")
        cats = await eventually(lambda: _with_len(coupons_of(svc, cat), 1), message="initiator coupon")
        assert (cats[0]["value"], cats[0]["rule"]) == (500, "initiator_coupon")
        commissions = await eventually(lambda: _with_entries(commissions_of(svc, ann), 1), message="commission")
        assert commissions["balances"] == {"pending": 500, "available": 0, "withdrawn": 0, "balance": 500}
        [entry] = commissions["entries"]
        assert entry["status"] == "pending" and entry["source"]["rule"] == "expert_commission"
        assert entry["source"]["source_event_id"] == q6["id"]
        # qualified_count at the threshold gives no commission
        await send(p, qualified(ann, f"dan-{namespace}", 5))
        await eventually(lambda: _with_len(coupons_of(svc, ann), 2), message="second inviter coupon")
        assert len((await commissions_of(svc, ann))["entries"]) == 1

    events = await read_rewards_events(infra.bootstrap_servers, settings.topic("rewards.events"), 6)
    issued = [e for e in events if e["type"] == "rewards.coupon_issued"]
    credited = [e for e in events if e["type"] == "rewards.commission_credited"]
    assert {e["data"]["source_event_id"] for e in issued} >= {welcome["id"], q6["id"], formed["id"]}
    assert [e["data"]["source_event_id"] for e in credited] == [q6["id"]]
    assert {e["data"]["coupon_code"] for e in issued} >= {c["code"] for c in bobs}


async def _with_len(coro: Any, n: int) -> Any:
    items = await coro
    return items if len(items) >= n else None


async def _with_entries(coro: Any, n: int) -> Any:
    body = await coro
    return body if len(body["entries"]) >= n else None


# ------------------------------------------------------------------ exactly once


async def create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def test_rewards_same_event_ten_times_concurrently_through_two_replicas_is_one_reward(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    # several partitions, so that the two replicas of the consumer group each own some
    await create_topics(infra.bootstrap_servers, [settings.topic(t) for t in TOPIC_OF.values()], 4)
    ann, bob = f"ann-{namespace}", f"bob-{namespace}"
    events = [bound(ann, bob), qualified(ann, bob, 9)]
    async with running(build_app, settings) as one, running(build_app, settings) as two, \
            Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await eventually(lambda: _split(one, two), message="both replicas hold partitions")
        # ten deliveries of each event on different partitions (so both replicas get copies) ...
        for event in events:
            await asyncio.gather(*(send(p, event, key=f"k{i}") for i in range(10)))
        # ... and ten more straight into both replicas' handlers at once
        deps = [one.app.state.rewards_deps, two.app.state.rewards_deps]
        await asyncio.gather(*(handlers.on_rewarding_event(typed(e), deps[i % 2])
                               for e in events for i in range(10)))
        for svc in (one, two):
            await eventually(lambda svc=svc: _caught_up(svc), message="every Kafka copy fetched")
        await asyncio.sleep(2)  # and handled
        for svc in (one, two):
            assert len(await coupons_of(svc, bob)) == 2
            assert len(await coupons_of(svc, ann)) == 1
            assert len((await commissions_of(svc, ann))["entries"]) == 1
        assert await one.db.coupons.count_documents({}) == 3
        assert await one.db[LEDGER].count_documents({}) == 1
        await ledger_is_consistent(one.db, ann)


async def _split(one: Any, two: Any) -> bool:
    def parts(svc: Any) -> set[Any]:
        return {tp for s in svc.runtime.broker.subscribers if s.consumer for tp in s.consumer.assignment()}
    a, b = parts(one), parts(two)
    return bool(a) and bool(b) and not (a & b)


async def test_rewards_replaying_every_topic_from_the_beginning_creates_nothing_new(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    ann, bob = f"ann-{namespace}", f"bob-{namespace}"
    async with running(build_app, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await send(p, bound(ann, bob))
        await send(p, qualified(ann, bob, 7))
        await send(p, group_formed(ann, "g-r"))
        coupons = await eventually(lambda: _with_len(coupons_of(svc, bob), 2), message="welcome")
        code = next(c["code"] for c in coupons if c["kind"] == "amount_off")
        reserve = await svc.client.post(f"/v1/coupons/{code}/redemptions", headers=SERVICE,
                                        json={"order_id": "o-r1", "user_id": bob, "order_amount": 6000})
        assert reserve.status_code == 201, reserve.text
        await send(p, order_completed(bob, "o-r1", 6000, coupon_codes=[code]))
        await send(p, order_refunded(bob, "o-r1"))
        await send(p, disqualified(ann, bob, 0))
        await eventually(lambda: _ledger_len(svc, ann, 2), message="credit and reversal")
        await eventually(lambda: _transition_count(svc, 4), message="reserve, confirm, restore, revoke")
        before = await _snapshot(svc.db)

    replay = settings_for(RewardsSettings, infra, namespace, consumer_group=f"{namespace}-replay")
    async with running(build_app, replay) as again:
        await eventually(lambda: _caught_up(again), timeout=60, message="replay consumed every topic")
        await asyncio.sleep(1)
        assert await _snapshot(again.db) == before


async def _ledger_len(svc: Any, user: str, n: int) -> bool:
    return await svc.db[LEDGER].count_documents({"user_id": user}) >= n


async def _transition_count(svc: Any, n: int) -> bool:
    return await svc.db.coupon_transitions.count_documents({}) >= n


async def _snapshot(db: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ("coupons", "coupon_transitions", "ledger", "refusals", "budget_claims"):
        result[name] = sorted([d["_id"] async for d in db[name].find({}, {"_id": 1})])
    return result


async def _caught_up(svc: Any) -> bool:
    for subscriber in svc.runtime.broker.subscribers:
        consumer = subscriber.consumer
        partitions = list(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            if await consumer.position(tp) < ends[tp]:
                return False
    return True


# ------------------------------------------------------------------ coupons


async def test_rewards_events_granted_together_each_keep_the_trace_of_their_source(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    async with running(build_app, settings) as svc:
        traces = {f"inv{i}-{namespace}": uuid.uuid4().hex for i in range(3)}
        events = [typed({**qualified(inviter, f"b{i}", 1), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
                  for i, (inviter, trace) in enumerate(traces.items())]
        granted = await handlers.on_rewarding_events(events, svc.app.state.rewards_deps)
        assert len(granted) == 3
        for inviter, trace in traces.items():
            [coupon] = await svc.db.coupons.find({"user_id": inviter}).to_list()
            [entry] = coupon["outbox"]
            assert json.loads(entry["payload"])["traceparent"].split("-")[1] == trace


async def test_rewards_reservation_sweep_reads_only_reserved_coupons(infra, namespace):
    """The sweep runs every 30 s over every coupon ever issued: it must be an index lookup, not a
    scan (FerretDB pushes no dotted path such as ``state.status`` down to PostgreSQL)."""
    settings = settings_for(RewardsSettings, infra, namespace, reservation_sweep_seconds=3600)
    async with running(build_app, settings) as svc:
        now = datetime.now(UTC)
        coupons = [{"_id": f"c{i}", "code": f"C{i}", "user_id": f"u{i % 50}", "reserved": i % 500 == 7,
                    "state": {"status": "reserved" if i % 500 == 7 else "available",
                              "reserved_at": now - timedelta(hours=1) if i % 500 == 7 else None}}
                   for i in range(2000)]
        await svc.db.coupons.insert_many(coupons)
        deps = svc.app.state.rewards_deps
        lapsed = await deps.coupons.reserved_before(now - timedelta(minutes=30))
        assert sorted(c["_id"] for c in lapsed) == ["c1007", "c1507", "c507", "c7"]
        scans, plan = await scans_the_collection(svc.db, "coupons", reserved_before_query(now))
        assert not scans, plan


async def test_rewards_coupon_reservation_confirmation_refund_expiry_and_sweep(infra, namespace):
    clock = ShiftedClock()
    settings = settings_for(RewardsSettings, infra, namespace, reservation_sweep_seconds=3600)
    bob = f"bob-{namespace}"
    async with running(partial(build_app, clock=clock), settings) as svc, \
            Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await send(p, bound(f"ann-{namespace}", bob))
        coupons = await eventually(lambda: _with_len(coupons_of(svc, bob), 2), message="welcome")
        code = next(c["code"] for c in coupons if c["kind"] == "amount_off")
        free = next(c["code"] for c in coupons if c["kind"] == "free_shipping")
        url = f"/v1/coupons/{code}/redemptions"

        async def reserve(order: str, amount: int = 6000, user: str = bob, headers: Any = SERVICE) -> Any:
            return await svc.client.post(url, headers=headers,
                                         json={"order_id": order, "user_id": user, "order_amount": amount})

        assert (await reserve("o1", headers=token(bob))).status_code == 403, "service scope only"
        assert (await svc.client.post("/v1/coupons/NOPE/redemptions", headers=SERVICE, json={
            "order_id": "o1", "user_id": bob, "order_amount": 1})).json()["error"]["code"] == "coupon_not_found"
        assert (await reserve("o1", amount=4999)).json()["error"]["code"] == "threshold_not_met"
        assert (await reserve("o1", user="eve")).json()["error"]["code"] == "coupon_not_owned"
        assert (await reserve("o1", amount=-1)).status_code == 422
        first = await reserve("o1")
        assert first.status_code == 201 and first.json()["status"] == "reserved", first.text
        assert (await reserve("o1")).status_code == 200, "a retry for the same order succeeds again"
        other = await reserve("o2")
        assert (other.status_code, other.json()["error"]["code"]) == (409, "coupon_reserved")
        mine = {c["code"]: c for c in await coupons_of(svc, bob)}
        assert mine[code]["status"] == "reserved" and mine[code]["order_id"] == "o1"
        # release by DELETE, twice
        for _ in range(2):
            released = await svc.client.delete(f"{url}/o1", headers=SERVICE)
            assert released.status_code == 200 and released.json()["status"] == "available", released.text
        assert (await svc.client.delete(f"{url}/o9", headers=SERVICE)).status_code == 404
        # an unconfirmed reservation lapses after 30 minutes; the sweep releases it
        assert (await reserve("o3")).status_code == 201
        clock.advance(timedelta(minutes=31))
        assert await _status(svc, bob, code, "available"), "a lapsed reservation is available at read time"
        deps = svc.app.state.rewards_deps
        assert await handlers.release_lapsed_reservations(deps) == 1
        assert await handlers.release_lapsed_reservations(deps) == 0
        # idempotent reservation with Idempotency-Key
        keyed = {**SERVICE, "Idempotency-Key": "k-1"}
        assert (await reserve("o4", headers=keyed)).status_code == 201
        replayed = await reserve("o4", headers=keyed)
        assert replayed.status_code == 201 and replayed.headers.get("Idempotent-Replayed") == "true"
        assert (await reserve("o5", headers=keyed)).status_code == 409
        # the order completes: redeemed, announced
        completed = order_completed(bob, "o4", 6000, coupon_codes=[code])
        await send(p, completed)
        await eventually(lambda: _status(svc, bob, code, "redeemed"), message="redeemed")
        assert (await reserve("o6")).json()["error"]["code"] == "coupon_redeemed"
        assert (await svc.client.delete(f"{url}/o4", headers=SERVICE)).json()["error"]["code"] == "coupon_redeemed"
        # a partial refund changes nothing, a full one gives it back
        await send(p, order_refunded(bob, "o4", 100, full=False))
        await send(p, order_refunded(bob, "o4"))
        await eventually(lambda: _status(svc, bob, code, "available"), message="given back")
        # the same completion again (a replay) does not redeem it again
        await send(p, completed)
        await send(p, order_completed(bob, "o-free", 100, coupon_codes=[free]))
        await eventually(lambda: _status(svc, bob, free, "redeemed"), message="free shipping redeemed")
        assert await _status(svc, bob, code, "available")
        # expiry is computed at read time
        clock.advance(timedelta(days=8))
        assert await _status(svc, bob, code, "expired")
        assert (await reserve("o7")).json()["error"]["code"] == "coupon_expired"
        # a refund after expiry does not give the coupon back
        await send(p, order_refunded(bob, "o-free"))
        await asyncio.sleep(1.5)
        assert await _status(svc, bob, free, "redeemed")

    events = await read_rewards_events(infra.bootstrap_servers, settings.topic("rewards.events"), 4)
    redeemed = [e for e in events if e["type"] == "rewards.coupon_redeemed"]
    assert [(e["data"]["coupon_code"], e["data"]["order_id"], e["data"]["source_event_id"])
            for e in redeemed if e["data"]["coupon_code"] == code] == [(code, "o4", completed["id"])]


async def _status(svc: Any, user: str, code: str, status: str) -> bool:
    return any(c["code"] == code and c["status"] == status for c in await coupons_of(svc, user))


# ------------------------------------------------------------------ commissions and withdrawals


async def test_rewards_commission_hold_withdrawal_reversal_and_negative_balance(infra, namespace):
    clock = ShiftedClock()
    settings = settings_for(RewardsSettings, infra, namespace)
    ann = f"ann-{namespace}"
    async with running(partial(build_app, clock=clock), settings) as svc, \
            Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        for i, invitee in enumerate(("b1", "b2", "b3")):
            await send(p, qualified(ann, f"{invitee}-{namespace}", 6 + i))
        body = await eventually(lambda: _with_entries(commissions_of(svc, ann), 3), message="three credits")
        assert body["balances"] == {"pending": 1500, "available": 0, "withdrawn": 0, "balance": 1500}

        async def withdraw(amount: int, key: str | None = None) -> Any:
            headers = {**token(ann), **({"Idempotency-Key": key} if key else {})}
            return await svc.client.post("/v1/me/withdrawals", headers=headers, json={"amount": amount})

        assert (await withdraw(1000)).json()["error"]["code"] == "insufficient_balance", "still on hold"
        clock.advance(timedelta(days=7, minutes=1))
        body = await commissions_of(svc, ann)
        assert body["balances"] == {"pending": 0, "available": 1500, "withdrawn": 0, "balance": 1500}
        assert {e["status"] for e in body["entries"]} == {"available"}
        assert (await withdraw(999)).json()["error"]["code"] == "below_minimum_withdrawal"
        assert (await withdraw(1.5)).status_code == 422  # type: ignore[arg-type]
        done = await withdraw(1000, key="w-1")
        assert done.status_code == 201, done.text
        assert done.json()["balances"] == {"pending": 0, "available": 500, "withdrawn": 1000, "balance": 500}
        again = await withdraw(1000, key="w-1")
        assert again.status_code == 201 and again.json()["withdrawal_id"] == done.json()["withdrawal_id"]
        assert (await withdraw(1000)).json()["error"]["code"] == "insufficient_balance"
        # two invites disqualified after the money was withdrawn: negative balance, withdrawals refused
        await send(p, disqualified(ann, f"b1-{namespace}", 2))
        await send(p, disqualified(ann, f"b2-{namespace}", 1))
        body = await eventually(lambda: _with_entries(commissions_of(svc, ann), 6), message="reversals")
        assert body["balances"] == {"pending": 0, "available": -500, "withdrawn": 1000, "balance": -500}
        reversals = [e for e in body["entries"] if e["kind"] == "reversal"]
        assert sorted(e["amount"] for e in reversals) == [-500, -500]
        assert sum(e["status"] == "reversed" for e in body["entries"]) == 2
        assert (await withdraw(1000)).json()["error"]["code"] == "balance_negative"
        # the inviter coupons of those invites are revoked; the third stays
        coupons = await coupons_of(svc, ann)
        assert sorted(c["status"] for c in coupons) == ["available", "revoked", "revoked"]
        # a repeated disqualification changes nothing
        await send(p, disqualified(ann, f"b1-{namespace}", 1))
        await asyncio.sleep(1.5)
        assert len((await commissions_of(svc, ann))["entries"]) == 6
        # a new credit (its hold already over on the test clock) makes the balance up to zero
        await send(p, qualified(ann, f"b4-{namespace}", 9))
        body = await eventually(lambda: _with_entries(commissions_of(svc, ann), 7), message="new credit")
        assert body["balances"] == {"pending": 0, "available": 0, "withdrawn": 1000, "balance": 0}
        assert (await withdraw(1000)).json()["error"]["code"] == "insufficient_balance"
        await ledger_is_consistent(svc.db, ann)

    events = await read_rewards_events(infra.bootstrap_servers, settings.topic("rewards.events"), 13)
    types = [e["type"] for e in events]
    assert types.count("rewards.withdrawal_requested") == 1
    assert types.count("rewards.commission_reversed") == 2
    assert types.count("rewards.coupon_revoked") == 2


async def test_rewards_hundred_withdrawals_racing_ten_credits_never_overdraw(infra, namespace):
    clock = ShiftedClock()
    settings = settings_for(RewardsSettings, infra, namespace, commission_hold_days=0)
    ann = f"ann-{namespace}"
    async with running(partial(build_app, clock=clock), settings) as svc:
        deps = svc.app.state.rewards_deps
        # a starting balance, then 10 credits of 500 racing 100 withdrawals of 1000
        await handlers.on_rewarding_event(typed(qualified(ann, "b0", 6)), deps)
        await handlers.on_rewarding_event(typed(qualified(ann, "b00", 7)), deps)
        credits = [handlers.on_rewarding_event(typed(qualified(ann, f"b{i}", 10 + i)), deps) for i in range(10)]
        withdrawals = [svc.client.post("/v1/me/withdrawals", headers=token(ann), json={"amount": 1000})
                       for _ in range(100)]
        results = await asyncio.gather(*credits, *withdrawals)
        responses = results[10:]
        ok = [r for r in responses if r.status_code == 201]
        refused = [r for r in responses if r.status_code != 201]
        assert all(r.json()["error"]["code"] == "insufficient_balance" for r in refused), refused[:1]
        state = await ledger_is_consistent(svc.db, ann)
        total_credit = 12 * 500
        assert len(ok) * 1000 == state.withdrawn <= total_credit
        assert state.balance == total_credit - state.withdrawn >= 0
        async for doc in svc.db[LEDGER].find({"user_id": ann}):
            assert doc["balance_after"] >= 0, "the balance was never below zero"
        assert len(ok) >= 1


# ------------------------------------------------------------------ budgets


async def test_rewards_budgets_are_never_exceeded_and_refusals_are_recorded(infra, namespace):
    budgets = [
        {"scope": "user", "rules": ["inviter_coupon"], "max_count": 2},
        {"scope": "day", "rules": ["initiator_coupon"], "max_count": 5},
        {"scope": "device", "max_count": 2},
        {"scope": "campaign", "campaign": "referral", "rules": ["expert_commission"], "max_amount": 1000},
    ]
    settings = settings_for(RewardsSettings, infra, namespace, budgets=budgets)
    await create_topics(infra.bootstrap_servers, [settings.topic(t) for t in TOPIC_OF.values()], 4)
    ann = f"ann-{namespace}"
    async with running(build_app, settings) as one, running(build_app, settings) as two:
        deps = [one.app.state.rewards_deps, two.app.state.rewards_deps]
        formed = [typed(group_formed(f"u{i}-{namespace}", f"g{i}")) for i in range(20)]
        # every event delivered twice, concurrently, to both replicas
        await asyncio.gather(*(handlers.on_rewarding_event(e, d) for e in formed for d in deps))
        assert await one.db.coupons.count_documents({"rule": "initiator_coupon"}) == 5
        assert await one.db.refusals.count_documents({"rule": "initiator_coupon"}) == 15
        # per user: the inviter's third and later coupons are refused; per campaign amount: two commissions
        quals = [typed(qualified(ann, f"b{i}", 6 + i)) for i in range(4)]
        await asyncio.gather(*(handlers.on_rewarding_event(e, d) for e in quals for d in deps))
        assert len(await coupons_of(one, ann)) == 2
        assert await one.db[LEDGER].count_documents({"user_id": ann}) == 2
        # per device: three invitees on one device, only two welcome packs' worth of coupons
        for invitee in ("x1", "x2", "x3"):
            await handlers.on_rewarding_event(typed(bound(ann, f"{invitee}-{namespace}", device="dev-9")), deps[0])
        assert await one.db.coupons.count_documents({"device_id": "dev-9"}) == 2
        listed = await one.client.get("/v1/rewards/refusals", params={"limit": 1000}, headers=ADMIN)
        assert listed.status_code == 200
        reasons = {r["reason"].split(":")[1] for r in listed.json()["refusals"]}
        assert reasons == {"user", "day", "device", "campaign[referral]"}
        assert (await one.client.get("/v1/rewards/refusals", headers=token(ann))).status_code == 403
        # replaying everything changes nothing: no new grant, no new refusal, no budget claim twice
        before = await _snapshot(one.db)
        await asyncio.gather(*(handlers.on_rewarding_event(e, d) for e in [*formed, *quals] for d in deps))
        assert await _snapshot(one.db) == before
        # the budget ledgers agree with what was granted
        day_claims = [d async for d in one.db.budget_claims.find({"key": {"$regex": "^day:"}}).sort("seq", 1)]
        assert day_claims[-1]["count_after"] == 5


def test_rewards_reward_ids_and_codes_are_deterministic():
    assert reward_id("inviter_coupon", "e1", "ann") == "inviter_coupon:e1:ann"
    assert coupon_code(reward_id("inviter_coupon", "e1", "ann")) == coupon_code("inviter_coupon:e1:ann")


# ------------------------------------------------------------------ crash


async def _send_to_a_dying_process(settings: RewardsSettings, infra: Any, event: dict[str, Any],
                                    crash_at: str) -> None:
    """Send ``event`` to a rewards process that SIGKILLs itself at ``crash_at`` while handling it."""
    crashing = await start_crashing("rewards", settings, infra, crash_at=crash_at)
    try:
        async with Producer(infra.bootstrap_servers, settings.topic_prefix) as producer:
            await send(producer, event)
        assert await asyncio.wait_for(crashing.wait(), 60) == -9
    finally:
        if crashing.returncode is None:
            crashing.kill()


async def test_rewards_process_killed_after_granting_before_commit_grants_once_and_publishes(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    ann, bob = f"ann-{namespace}", f"bob-{namespace}"
    event = qualified(ann, bob, 8)
    await _send_to_a_dying_process(settings, infra, event, "after_handler")

    async with running(build_app, settings) as svc:
        # stored before the crash, and the same event comes again: still one of each
        await eventually(lambda: _caught_up(svc), message="redelivered event handled")
        await asyncio.sleep(1)
        assert len(await coupons_of(svc, ann)) == 1
        assert await svc.db[LEDGER].count_documents({"user_id": ann}) == 1
        # whatever the dead process had not published, the relay publishes
        await eventually(lambda: _nothing_pending(svc), message="outbox drained")
        # the coupon was published before the handler returned; the mark comes after the acks, so
        # the kill may have prevented it and the redelivery published the coupon's event again
        await eventually(lambda: svc.db.outbox_published.find_one({"_id": {"$regex": "^coupons:"}}),
                         message="coupon marked published")
    records = await read_topic(infra.bootstrap_servers, settings.topic("rewards.events"))
    events = {e["id"]: e for e in (json.loads(r.value) for r in records)}  # copies share their id
    assert sorted(e["type"] for e in events.values()) == ["rewards.commission_credited", "rewards.coupon_issued"]
    assert {e["data"]["source_event_id"] for e in events.values()} == {event["id"]}


async def test_rewards_process_killed_after_storing_a_coupon_before_publishing_it_publishes_on_redelivery(
        infra, namespace):
    """Issued coupons are not flagged for the relay: the inbound offset is what is pending. The
    process dies after the coupon is stored and before its event is published; the redelivered
    event finds the coupon, sees no publish mark and publishes the stored event."""
    settings = settings_for(RewardsSettings, infra, namespace)
    ann, bob = f"ann-{namespace}", f"bob-{namespace}"
    event = qualified(ann, bob, 2)  # a coupon, no commission
    await _send_to_a_dying_process(settings, infra, event, "before_publish")
    store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_uri)
    try:
        db = store[settings.mongodb_database]
        [stored] = await db.coupons.find({"user_id": ann}).to_list()
        assert stored["outbox_pending"] is False and await db.outbox_published.count_documents({}) == 0
    finally:
        await store.close()
    async with running(build_app, settings) as svc:
        await eventually(lambda: _caught_up(svc), message="redelivered event handled")
        await eventually(lambda: svc.db.outbox_published.find_one({"_id": f"coupons:{stored['_id']}"}),
                         message="published and marked")
        assert len(await coupons_of(svc, ann)) == 1
    [issued] = await read_rewards_events(infra.bootstrap_servers, settings.topic("rewards.events"), 1)
    assert issued["type"] == "rewards.coupon_issued" and issued["data"]["coupon_code"] == stored["code"]
    assert issued["data"]["source_event_id"] == event["id"]


async def _nothing_pending(svc: Any) -> bool:
    for name in ("coupons", "ledger"):
        if await svc.db[name].count_documents({"outbox_pending": True}):
            return False
    return True


async def test_replay_republishes_a_coupon_only_when_no_completed_run_published_it(infra, namespace):
    """A replay of history the live group committed skips the publish-mark lookups (that run
    published before committing); a replay outside that history (here: a group that never
    committed) checks the mark and publishes a coupon whose mark is missing."""
    settings = settings_for(RewardsSettings, infra, namespace)
    ann, bob = f"ann-{namespace}", f"bob-{namespace}"
    started = datetime.now(UTC) - timedelta(seconds=5)
    async with running(build_app, settings) as svc:
        async with Producer(infra.bootstrap_servers, settings.topic_prefix) as producer:
            await send(producer, qualified(ann, bob, 2))
        coupon = await eventually(lambda: svc.db.coupons.find_one({"user_id": ann}), message="coupon granted")
        async def committed() -> bool:
            offsets = await committed_offsets(infra.bootstrap_servers, settings.consumer_group)
            return sum(offsets.values()) == 1

        await eventually(committed, message="offset committed")
        mark = {"_id": f"coupons:{coupon['_id']}"}
        await eventually(lambda: svc.db.outbox_published.find_one(mark), message="marked after the acks")
        assert (await svc.db.outbox_published.delete_one(mark)).deleted_count == 1
        common = {"kafka_bootstrap_servers": infra.bootstrap_servers, "mongodb_uri": infra.mongodb_uri,
                  "topic_prefix": settings.topic_prefix, "mongodb_database": settings.mongodb_database,
                  "environment": "test", "jwt_secret": LOCAL_DEV_JWT_SECRET}
        summary = await replay("rewards", started, consumer_group=settings.consumer_group, **common)
        assert summary.effects_applied == 0 and summary.events_read == 1
        assert await svc.db.outbox_published.find_one(mark) is None, "committed history: no lookup, no publish"
        summary = await replay("rewards", started, consumer_group=f"never-ran-{namespace}", **common)
        assert summary.effects_applied == 0
        assert await svc.db.outbox_published.find_one(mark) is not None, "unmarked coupon published again"
    issued = await read_rewards_events(infra.bootstrap_servers, settings.topic("rewards.events"), 2)
    assert [e["type"] for e in issued] == ["rewards.coupon_issued"] * 2
    assert len({e["id"] for e in issued}) == 1, "the same event (same id) published again"


async def test_publish_marks_older_than_the_retention_are_deleted(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    async with running(build_app, settings) as svc:
        marks = PublishMarks(svc.db)
        await marks.mark("coupons", ["recent"])
        await svc.db.outbox_published.insert_one(
            {"_id": "coupons:old", "at": datetime.now(UTC) - timedelta(days=8)})
        assert await marks.expire(timedelta(days=7)) == 1
        assert await marks.missing("coupons", ["recent", "old"]) == ["old"]
