"""Fault injection: the story at volume while processes die, the broker restarts and the store goes away.

A seeded generator makes a few thousand events (10% exact duplicates, orders sometimes before the
registration they depend on). While they flow, each service is SIGKILLed three times at random
moments and restarted, the Kafka broker is stopped and started once, and the store is down for 10 s
(services must report not-ready meanwhile). Afterwards every expected binding, qualification,
coupon, commission and group outcome must exist exactly once, computed by an oracle from the
generated events alone, with nothing extra. Everything is bounded in time and on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.events import Producer, order_completed, order_refunded, user_registered
from tests.support.services import eventually
from tests.support.system import System, running_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SEED = int(os.environ.get("PINWHEEL_CHAOS_SEED", "20261121"))
SMALL_INVITERS, SMALL_SIZE = 60, 4  # never reach fission expert: no commissions
BIG_INVITERS, BIG_SIZE = 25, 8  # expert at 5: qualified invites 6, 7 and 8 earn commissions
GROUPS = 40
EXPERT_AT = 5


@dataclass
class Plan:
    """The generated workload and, from it alone, what the system must end up with."""

    inviters: dict[str, list[str]] = field(default_factory=dict)  # inviter -> invitees
    refunded_inviters: set[str] = field(default_factory=set)  # every invitee's order refunded
    groups: list[tuple[str, str]] = field(default_factory=list)  # (initiator, mate)
    phase1: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    phase2: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def qualified_after(self, inviter: str) -> int:
        return 0 if inviter in self.refunded_inviters else len(self.inviters[inviter])

    def commissions(self, inviter: str) -> int:
        return max(0, len(self.inviters[inviter]) - EXPERT_AT)


def make_plan(rng: random.Random, namespace: str) -> Plan:
    plan = Plan()
    now = datetime.now(UTC)
    sizes = [SMALL_SIZE] * SMALL_INVITERS + [BIG_SIZE] * BIG_INVITERS
    registrations, orders = [], []
    for i, size in enumerate(sizes):
        inviter = f"inv{i}-{namespace}"
        plan.inviters[inviter] = [f"fr{i}x{j}-{namespace}" for j in range(size)]
    # some inviters see every invitee refund (after all of them qualified, in phase 2)
    plan.refunded_inviters = set(rng.sample([i for i, v in plan.inviters.items() if len(v) == SMALL_SIZE], 6)
                                 + rng.sample([i for i, v in plan.inviters.items() if len(v) == BIG_SIZE], 4))
    addresses = iter(range(1, 1 << 20))  # every invitee its own device and IP: no fraud rule fires
    for inviter, invitees in plan.inviters.items():
        for k, invitee in enumerate(invitees):
            n = next(addresses)
            registered_at = now - timedelta(minutes=30) + timedelta(seconds=k)
            registration = user_registered(invitee, referral_code=f"<code:{inviter}>",
                                           device_id=f"dev-{invitee}", ip=f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
            registration["data"]["registered_at"] = registered_at.isoformat().replace("+00:00", "Z")
            registrations.append(("users.events", registration))
            order = order_completed(invitee, f"o-{invitee}", 5000 + k)
            order["data"]["completed_at"] = (registered_at + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
            orders.append(("orders.events", order))
            if inviter in plan.refunded_inviters:
                plan.phase2.append(("orders.events", order_refunded(invitee, f"o-{invitee}", 5000 + k)))
    for g in range(GROUPS):
        plan.groups.append((f"gi{g}-{namespace}", f"gm{g}-{namespace}"))
    # registrations before orders mostly; 10% of orders jump ahead of their registration
    stream = registrations + orders
    rng.shuffle(stream)
    stream.sort(key=lambda item: (item[0] == "orders.events") and rng.random() > 0.1)
    plan.phase1 = _with_duplicates(rng, stream)
    plan.phase2 = _with_duplicates(rng, plan.phase2)
    return plan


def _with_duplicates(rng: random.Random, stream: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    out = list(stream)
    for item in rng.sample(stream, max(1, len(stream) // 10)):
        out.insert(rng.randrange(len(out) + 1), item)
    return out


async def produce(producer: Producer, stream: list[tuple[str, dict[str, Any]]], codes: dict[str, str],
                  per_second: float) -> None:
    for topic, event in stream:
        code = event["data"].get("referral_code")
        if code and code.startswith("<code:"):
            event = json.loads(json.dumps(event))
            event["data"]["referral_code"] = codes[code[6:-1]]
        for attempt in range(60):  # the broker may be restarting
            try:
                await producer.send(topic, event)
                break
            except Exception:
                if attempt == 59:
                    raise
                await asyncio.sleep(1)
        await asyncio.sleep(1 / per_second)


async def chaos(system: System, rng: random.Random, duration: float, log: list[str]) -> None:
    """Kill each service three times at random moments; restart Kafka once; take the store away 10 s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    kills = sorted((rng.uniform(1, duration), name) for name in system.services for _ in range(3))
    infra = system.infra

    async def at(moment: float) -> None:
        await asyncio.sleep(max(0.0, start + moment - loop.time()))

    async def killer() -> None:
        for moment, name in kills:
            await at(moment)
            log.append(f"{loop.time() - start:5.1f}s SIGKILL {name}")
            await system.services[name].restart()

    async def broker_restart() -> None:
        if infra.kafka is None:
            log.append("Kafka is external: not restarted")
            return
        await at(duration * 0.3)
        log.append(f"{loop.time() - start:5.1f}s Kafka stop")
        await asyncio.to_thread(infra.kafka.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(infra.kafka.start)
        log.append(f"{loop.time() - start:5.1f}s Kafka started")

    async def store_outage() -> None:
        if infra.store is None:
            log.append("store is external: not stopped")
            return
        await at(duration * 0.6)
        log.append(f"{loop.time() - start:5.1f}s store stop")
        await asyncio.to_thread(infra.store.stop_front)
        try:
            await asyncio.sleep(3)
            statuses = {name: await _ready(system, name) for name in system.services}
            log.append(f"readiness while the store is down: {statuses}")
            assert not any(statuses.values()), f"a service claims ready without its store: {statuses}"
            assert False in statuses.values(), f"no service answered its readiness probe: {statuses}"
            await asyncio.sleep(7)
        finally:
            await asyncio.to_thread(infra.store.start_front)
        log.append(f"{loop.time() - start:5.1f}s store started")

    # a TaskGroup: if one fault fails (an assertion), the others are cancelled, not left restarting
    # services behind the test's cleanup
    async with asyncio.TaskGroup() as faults:
        faults.create_task(killer())
        faults.create_task(broker_restart())
        faults.create_task(store_outage())


async def _ready(system: System, name: str) -> bool | None:
    try:
        response = await system.clients[name].get("/readyz", timeout=5)
    except Exception:
        return None  # restarting: not ready either
    return response.status_code == 200


async def wait_all_ready(system: System) -> None:
    for service in system.services.values():
        await service.wait_ready(timeout=180)


async def coupons(system: System, user: str) -> list[dict[str, Any]]:
    response = await system.call("rewards", "GET", "/v1/me/coupons", user)
    assert response.status_code == 200, response.text
    return list(response.json()["coupons"])


async def test_story_at_volume_under_faults_matches_the_oracle(infra, namespace, tmp_path):
    rng = random.Random(SEED)
    plan = make_plan(rng, namespace)
    fault_log: list[str] = [f"seed {SEED}"]
    now = datetime.now(UTC)
    async with running_system(infra, namespace, tmp_path) as system:
        codes = {}
        for inviter in plan.inviters:
            response = await system.call("referral", "POST", "/v1/referral-codes", inviter)
            assert response.status_code in (200, 201), response.text
            codes[inviter] = response.json()["code"]
        campaign = {"campaign_id": f"pair-{namespace}", "sku": "tea", "list_price": 10000,
                    "tiers": [{"size": 2, "percent_off": 20}], "stock": 1000,
                    "starts_at": (now - timedelta(minutes=1)).isoformat(),
                    "ends_at": (now + timedelta(days=1)).isoformat()}
        created = await system.call("groupbuy", "POST", "/v1/campaigns", "ops", "admin", json=campaign)
        assert created.status_code == 201, created.text
        group_orders: list[tuple[str, dict[str, Any]]] = []
        for initiator, mate in plan.groups:
            opened = await system.call("groupbuy", "POST", f"/v1/campaigns/{campaign['campaign_id']}/groups", initiator)
            assert opened.status_code == 201, opened.text
            group_id = opened.json()["group_id"]
            joined = await system.call("groupbuy", "POST", f"/v1/groups/{group_id}/members", mate)
            assert joined.status_code == 201, joined.text
            for user in (initiator, mate):
                group_orders.append(("orders.events", order_completed(user, f"o-{user}", 8000, group_id=group_id)))
        phase1 = plan.phase1 + _with_duplicates(rng, group_orders)
        rng.shuffle(phase1)
        fault_log.append(f"phase 1: {len(phase1)} events, phase 2: {len(plan.phase2)} events")

        async with Producer(infra.bootstrap_servers, system.topic_prefix) as producer:
            duration = 30.0
            async with asyncio.TaskGroup() as phase:
                phase.create_task(produce(producer, phase1, codes, per_second=len(phase1) / duration))
                phase.create_task(chaos(system, rng, duration, fault_log))
            await wait_all_ready(system)
            await eventually(lambda: _all_qualified(system, plan), timeout=300, interval=2,
                             message="every invitee qualified after the faults")
            # phase 2: refunds (with duplicates) while rewards is killed once more
            refunds = asyncio.create_task(produce(producer, plan.phase2, codes, per_second=50))
            await asyncio.sleep(0.5)
            await system.services["rewards"].restart()
            await refunds
            await wait_all_ready(system)
            await eventually(lambda: _refunds_settled(system, plan), timeout=300, interval=2,
                             message="refunds disqualified and reversed")

        await check_oracle(system, plan)
    print("\n".join(fault_log))


async def _referrals(system: System, inviter: str) -> dict[str, Any]:
    response = await system.call("referral", "GET", "/v1/me/referrals", inviter)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _all_qualified(system: System, plan: Plan) -> bool:
    for inviter, invitees in plan.inviters.items():
        if (await _referrals(system, inviter))["qualified_count"] != len(invitees):
            return False
    return True


async def _refunds_settled(system: System, plan: Plan) -> bool:
    for inviter in plan.refunded_inviters:
        if (await _referrals(system, inviter))["qualified_count"] != 0:
            return False
        ledger = (await system.call("rewards", "GET", "/v1/me/commissions", inviter)).json()
        if ledger["balances"]["balance"] != 0:
            return False
    return True


async def check_oracle(system: System, plan: Plan) -> None:
    for inviter, invitees in plan.inviters.items():
        mine = await _referrals(system, inviter)
        refunded = inviter in plan.refunded_inviters
        assert mine["qualified_count"] == plan.qualified_after(inviter), inviter
        statuses = Counter(i["status"] for i in mine["invitees"])
        assert statuses == Counter({"disqualified" if refunded else "qualified": len(invitees)}), (inviter, statuses)
        expected_milestones = ["high_fission_user"] + (["fission_expert"] if len(invitees) >= EXPERT_AT else [])
        assert mine["milestones_reached"] == expected_milestones, inviter

        # one 2000 inviter coupon per qualification, revoked when it was disqualified
        held = await coupons(system, inviter)
        assert len(held) == len(invitees), (inviter, held)
        assert {(c["value"], c["threshold"]) for c in held} == {(2000, 0)}
        assert Counter(c["status"] for c in held) == Counter({"revoked" if refunded else "available": len(invitees)})

        ledger = (await system.call("rewards", "GET", "/v1/me/commissions", inviter)).json()
        kinds = Counter(e["kind"] for e in ledger["entries"])
        credits = plan.commissions(inviter)
        assert kinds["credit"] == credits, (inviter, ledger)
        assert kinds["reversal"] == (credits if refunded else 0), (inviter, ledger)
        assert ledger["balances"]["balance"] == (0 if refunded else 500 * credits)
        assert sum(e["amount"] for e in ledger["entries"]) == ledger["balances"]["balance"]

        for invitee in invitees:
            welcome = await coupons(system, invitee)
            assert sorted((c["kind"], c["value"], c["threshold"]) for c in welcome) == [
                ("amount_off", 2000, 5000), ("free_shipping", 0, 0)], invitee

    for initiator, mate in plan.groups:
        initiator_coupons = await coupons(system, initiator)
        assert [(c["value"], c["threshold"]) for c in initiator_coupons] == [(500, 0)], initiator
        assert await coupons(system, mate) == [], "only the initiator is rewarded"
