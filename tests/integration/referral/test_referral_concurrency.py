"""Races and crashes against the real servers: duplicates via Kafka and concurrent handler calls (as a
second replica would make them) decide every effect exactly once; a crash between the insert and the
publish loses nothing and publishes nothing twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from services.referral.adapters.store import BINDINGS, LEDGER
from tests.support.services import eventually, token

from .conftest import Harness, completed, drained, registered, uid

pytestmark = pytest.mark.integration

COPIES = 20


async def test_the_same_registration_twenty_times_via_kafka_and_concurrently_binds_once(harness: Harness) -> None:
    alice, bob = uid("alice"), uid("bob")
    code = await harness.code_of(alice)
    event = registered(bob, referral_code=code)
    resent = [registered(bob, referral_code=code, at=None) for _ in range(3)]  # re-sent with new ids
    await asyncio.gather(*(harness.send_user(event) for _ in range(COPIES)),
                         *(harness.handle(event) for _ in range(COPIES)),
                         *(harness.handle(e) for e in resent))
    await harness.events.wait("referral.bound", invitee_id=bob)
    await drained(harness)
    # (The inbox's redelivery counter is a best-effort $inc: FerretDB updates are not atomic.)
    assert await harness.svc.db.inbox.count_documents({"_id": event["id"]}) == 1
    await harness.events.settle()
    assert len(harness.events.of("referral.bound", invitee_id=bob)) == 1
    assert await harness.svc.db[BINDINGS].count_documents({"_id": bob}) == 1
    assert await harness.svc.db.daily_binding_slots.count_documents({"invitee_id": bob}) == 1


async def test_the_same_order_twenty_times_qualifies_once_and_concurrent_invitees_count_exactly(
        harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    invitees = [uid("inv") for _ in range(7)]
    await asyncio.gather(*(harness.handle(registered(i, referral_code=code)) for i in invitees))
    orders = {i: completed(i) for i in invitees}
    # Every invitee's order at once, each twenty times: via Kafka and by direct concurrent calls.
    sends: list[Any] = []
    for order in orders.values():
        sends += [harness.send_order(order) for _ in range(COPIES // 2)]
        sends += [harness.handle(order) for _ in range(COPIES // 2)]
    await asyncio.gather(*sends)
    await drained(harness)
    qualified = await harness.events.wait("referral.qualified", count=len(invitees), inviter_id=alice)
    await harness.events.settle(2.0)
    qualified = harness.events.of("referral.qualified", inviter_id=alice)
    assert sorted(e["data"]["invitee_id"] for e in qualified) == sorted(invitees)
    assert sorted(e["data"]["qualified_count"] for e in qualified) == list(range(1, len(invitees) + 1))
    milestones = harness.events.of("referral.milestone_reached", inviter_id=alice)
    assert sorted((m["data"]["milestone"], m["data"]["qualified_count"]) for m in milestones) == [
        ("fission_expert", 5), ("high_fission_user", 3)]
    entries = await harness.svc.db[LEDGER].find({"inviter_id": alice}).sort("seq", 1).to_list()
    assert [e["seq"] for e in entries] == list(range(1, len(invitees) + 1))
    assert [e["qualified_count"] for e in entries] == list(range(1, len(invitees) + 1))
    assert (await harness.me(alice))["qualified_count"] == len(invitees)


async def test_concurrent_app_bindings_of_one_invitee_bind_once(harness: Harness) -> None:
    inviters = [uid("inviter") for _ in range(5)]
    codes = [await harness.code_of(i) for i in inviters]
    bob = uid("bob")
    await harness.send_user(registered(bob))
    await harness.wait_registration(bob)
    responses = await asyncio.gather(*(harness.bind(bob, codes[n % len(codes)]) for n in range(COPIES)))
    statuses = [r.status_code for r in responses]
    winners = {r.json()["inviter"] for r in responses if r.status_code in (200, 201)}
    assert statuses.count(201) >= 1 and len(winners) == 1, statuses
    assert all(r.json()["error"]["code"] == "already_bound" for r in responses if r.status_code == 409)
    await harness.events.settle()
    assert len(harness.events.of("referral.bound", invitee_id=bob)) == 1
    codes_again = await asyncio.gather(*(harness.client.post("/v1/referral-codes", headers=token(bob))
                                         for _ in range(10)))
    assert len({r.json()["code"] for r in codes_again}) == 1


async def test_a_crash_between_insert_and_publish_loses_nothing_and_publishes_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    relay = harness.deps.outbox

    async def crash(collection: str, document: dict[str, Any]) -> None:
        raise RuntimeError("the process died right after the insert")

    invitees = [uid("inv") for _ in range(3)]
    for invitee in invitees[:2]:
        await harness.handle(registered(invitee, referral_code=code))
        await harness.handle(completed(invitee))
    await harness.events.wait("referral.qualified", count=2, inviter_id=alice)

    # The third binding and qualification (which also reaches a milestone) are inserted, then we "die".
    bob = invitees[2]
    registration, order = registered(bob, referral_code=code), completed(bob)
    monkeypatch.setattr(relay, "flush_quietly", crash)
    with pytest.raises(RuntimeError):
        await harness.handle(registration)
    binding = await harness.deps.store.binding_of(bob)
    assert binding is not None and binding["outbox_pending"] is True
    with pytest.raises(RuntimeError):
        await harness.handle(order)
    entry = await harness.deps.store.ledger_entry(f"q:{bob}")
    assert entry is not None and entry["outbox_pending"] is True
    monkeypatch.undo()

    # The redelivery after the restart, and the relay, finish the job: each event exactly once.
    await harness.handle(registration)
    await harness.handle(order)
    await harness.events.wait("referral.bound", invitee_id=bob)
    await harness.events.wait("referral.qualified", invitee_id=bob, qualified_count=3)
    await harness.events.wait("referral.milestone_reached", inviter_id=alice, milestone="high_fission_user")
    await eventually(lambda: _published(harness, bob), message="outbox marked published")
    assert await relay.publish_pending(older_than=timedelta(0)) == 0
    await harness.events.settle()
    assert len(harness.events.of("referral.bound", invitee_id=bob)) == 1
    assert len(harness.events.of("referral.qualified", invitee_id=bob)) == 1
    assert len(harness.events.of("referral.milestone_reached", inviter_id=alice)) == 1


async def _published(harness: Harness, invitee: str) -> bool:
    binding = await harness.deps.store.binding_of(invitee)
    entry = await harness.deps.store.ledger_entry(f"q:{invitee}")
    return bool(binding and entry and not binding["outbox_pending"] and not entry["outbox_pending"])
