"""Qualification on the first order, milestones, disqualification on a full refund within the hold,
and events arriving out of order."""

from __future__ import annotations

import pytest

from tests.support.services import eventually

from .conftest import DAY, Harness, completed, refunded, registered, uid

pytestmark = pytest.mark.integration


async def _invite(harness: Harness, code: str, prefix: str = "inv", **data: object) -> str:
    invitee = uid(prefix)
    await harness.send_user(registered(invitee, referral_code=code, **data))
    await harness.events.wait("referral.bound", invitee_id=invitee)
    return invitee


async def test_first_orders_qualify_and_each_milestone_is_announced_once(harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    invitees = [await _invite(harness, code) for _ in range(6)]

    # An order below the minimum does not qualify; the next one does.
    await harness.send_order(completed(invitees[0], amount=0))
    first_order = completed(invitees[0], amount=100)
    await harness.send_order(first_order)
    [qualified] = await harness.events.wait("referral.qualified", invitee_id=invitees[0])
    assert qualified["data"] == {
        "inviter_id": alice, "invitee_id": invitees[0], "order_id": first_order["data"]["order_id"],
        "qualified_count": 1, "qualified_at": qualified["data"]["qualified_at"],
        "source_event_id": first_order["id"]}
    # A second order of the same invitee changes nothing.
    await harness.send_order(completed(invitees[0], amount=9000))

    for n, invitee in enumerate(invitees[1:], start=2):
        await harness.send_order(completed(invitee))
        [event] = await harness.events.wait("referral.qualified", invitee_id=invitee)
        assert event["data"]["qualified_count"] == n

    milestones = await harness.events.wait("referral.milestone_reached", count=2, inviter_id=alice)
    assert [(m["data"]["milestone"], m["data"]["qualified_count"]) for m in milestones] == [
        ("high_fission_user", 3), ("fission_expert", 5)]
    await harness.events.settle()
    assert len(harness.events.of("referral.qualified", inviter_id=alice)) == 6
    assert len(harness.events.of("referral.milestone_reached", inviter_id=alice)) == 2

    mine = await harness.me(alice)
    assert mine["qualified_count"] == 6
    assert mine["milestones_reached"] == ["high_fission_user", "fission_expert"]
    assert mine["next_milestone"] is None
    assert {i["status"] for i in mine["invitees"]} == {"qualified"}


async def test_full_refund_within_the_hold_disqualifies_and_regained_milestone_is_not_reannounced(
        harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    invitees = [await _invite(harness, code) for _ in range(4)]
    orders = {}
    for invitee in invitees[:3]:
        orders[invitee] = completed(invitee)
        await harness.send_order(orders[invitee])
        await harness.events.wait("referral.qualified", invitee_id=invitee)
    await harness.events.wait("referral.milestone_reached", inviter_id=alice, milestone="high_fission_user")

    # Partial refund: nothing. Full refund of another order than the qualifying one: nothing.
    await harness.send_order(refunded(invitees[1], orders[invitees[1]]["data"]["order_id"], full=False,
                                      amount=100))
    await harness.send_order(refunded(invitees[1], "some-other-order"))
    # Full refund after the hold: nothing.
    late = orders[invitees[0]]
    await harness.send_order(refunded(invitees[0], late["data"]["order_id"],
                                      at=harness.clock() + 8 * DAY))
    # Full refund within the hold: disqualified, count 3 -> 2.
    refund = refunded(invitees[2], orders[invitees[2]]["data"]["order_id"])
    await harness.send_order(refund)
    [disqualified] = await harness.events.wait("referral.disqualified", invitee_id=invitees[2])
    assert disqualified["data"]["qualified_count"] == 2
    assert disqualified["data"]["reason"] == "full_refund_within_hold"
    assert disqualified["data"]["order_id"] == orders[invitees[2]]["data"]["order_id"]
    assert disqualified["data"]["source_event_id"] == refund["id"]
    # The same refund again: nothing more.
    await harness.send_order(refund)

    # A new qualification regains 3: no second announcement.
    await harness.send_order(completed(invitees[3]))
    [regained] = await harness.events.wait("referral.qualified", invitee_id=invitees[3])
    assert regained["data"]["qualified_count"] == 3
    await harness.events.settle()
    assert len(harness.events.of("referral.milestone_reached", inviter_id=alice)) == 1
    assert len(harness.events.of("referral.disqualified", inviter_id=alice)) == 1
    # A disqualified invitee does not qualify again with another order.
    await harness.send_order(completed(invitees[2]))
    await harness.events.settle()
    assert len(harness.events.of("referral.qualified", invitee_id=invitees[2])) == 1

    mine = await harness.me(alice)
    assert sorted(i["status"] for i in mine["invitees"]) == ["disqualified", "qualified", "qualified", "qualified"]
    assert mine["qualified_count"] == 3 and mine["milestones_reached"] == ["high_fission_user"]
    assert mine["next_milestone"] == {"milestone": "fission_expert", "at": 5, "remaining": 2}


async def test_order_seen_before_the_registration_that_binds(harness: Harness) -> None:
    """An order completed after the registration time but delivered first qualifies once the binding
    exists; an order completed before the registration time refuses the binding (already_ordered)."""
    alice = uid("alice")
    code = await harness.code_of(alice)
    now = harness.clock()

    bob = uid("bob")
    registered_at = now - DAY
    order = completed(bob, at=registered_at + DAY / 24)
    await harness.send_order(order)
    await eventually(lambda: harness.deps.store.earliest_order_of(bob), message="order recorded")
    await harness.events.settle(0.5)
    assert harness.events.of(invitee_id=bob) == [], "no referral exists yet: nothing qualifies"
    await harness.send_user(registered(bob, at=registered_at, referral_code=code))
    await harness.events.wait("referral.bound", invitee_id=bob)
    [qualified] = await harness.events.wait("referral.qualified", invitee_id=bob)
    assert qualified["data"]["order_id"] == order["data"]["order_id"]
    assert qualified["data"]["qualified_count"] == 1

    carol = uid("carol")
    await harness.send_order(completed(carol, at=now - 2 * DAY))
    await eventually(lambda: harness.deps.store.earliest_order_of(carol), message="order recorded")
    registration = registered(carol, at=now - DAY, referral_code=code)
    await harness.send_user(registration)
    refusal = await eventually(lambda: harness.deps.store.refusal(registration["id"]), message="refusal")
    assert refusal["reason"] == "already_ordered"
    await harness.events.settle(0.5)
    assert harness.events.of(invitee_id=carol) == []


async def test_refund_seen_before_its_order_still_disqualifies(harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    bob = await _invite(harness, code)
    order = completed(bob)
    await harness.send_order(refunded(bob, order["data"]["order_id"]))
    await eventually(lambda: harness.deps.store.full_refund_of(order["data"]["order_id"]), message="refund")
    await harness.send_order(order)
    await harness.events.wait("referral.qualified", invitee_id=bob)
    [event] = await harness.events.wait("referral.disqualified", invitee_id=bob)
    assert event["data"]["qualified_count"] == 0
