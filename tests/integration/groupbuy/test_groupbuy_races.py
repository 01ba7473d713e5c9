"""Races on the real servers: seats, stock, and payments against the deadline on two replicas.
Every decision is a unique-key insert; these tests prove the invariants hold under contention."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from services.groupbuy.adapters import store as st
from services.groupbuy.adapters.store import GroupbuyStore
from services.groupbuy.handlers import Groupbuy, stock_scope
from shared.events import CloudEvent
from shared.events.schemas import OrderCompleted
from tests.support.services import token

pytestmark = pytest.mark.integration


async def _live_seats(gb, group_id):
    outcomes = {d["_id"]: d["outcome"] async for d in gb.db[st.SEAT_OUTCOMES].find({"group_id": group_id})}
    seats = [d async for d in gb.db[st.SEATS].find({"group_id": group_id})]
    return [s for s in seats if outcomes.get(s["_id"]) != "released"]


async def test_500_concurrent_joins_on_a_3_seat_group_take_exactly_3_seats(gb):
    campaign = await gb.campaign(stock=1000)
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    responses = await asyncio.gather(*(gb.join(group_id, f"u{i}") for i in range(500)))
    statuses = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in responses)
    assert statuses == {(201, None): 2, (409, "group_full"): 498}, statuses
    live = await _live_seats(gb, group_id)
    assert len(live) == 3 and sorted(s["slot"] for s in live) == [1, 2, 3]
    assert len({s["user_id"] for s in live}) == 3
    view = await gb.view(group_id)
    assert view["seats_taken"] == 3 and view["seats_left"] == 0
    assert await gb.groupbuy.store.in_use(stock_scope(campaign["campaign_id"])) == 3, "only seat holders hold stock"

    # every seat released (nobody paid); 300 more racing for the freed slots (generation 2) -> 3 again
    gb.clock.advance(timedelta(minutes=16))
    assert (await gb.groupbuy.run_due())["seats_released"] == 3
    responses = await asyncio.gather(*(gb.join(group_id, f"w{i}") for i in range(300)))
    assert sum(r.status_code == 201 for r in responses) == 3
    live = await _live_seats(gb, group_id)
    assert len(live) == 3 and all(s["generation"] == 2 for s in live)


async def test_the_same_user_racing_to_join_gets_one_seat(gb):
    campaign = await gb.campaign()
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    responses = await asyncio.gather(*(gb.join(group_id, "dave") for _ in range(40)))
    assert sum(r.status_code == 201 for r in responses) == 1
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 201} == {"already_member"}
    assert [s["user_id"] for s in await _live_seats(gb, group_id)] == ["carol", "dave"]


async def test_50_groups_racing_for_the_last_units_never_oversell(gb):
    campaign = await gb.campaign(stock=8)
    cid = campaign["campaign_id"]
    existing = [(await gb.open(cid, f"early{i}"))["group_id"] for i in range(3)]  # 3 units held
    opens = [gb.client.post(f"/v1/campaigns/{cid}/groups", headers=token(f"opener{i}")) for i in range(50)]
    joins = [gb.join(existing[i % 3], f"joiner{i}") for i in range(12)]
    responses = await asyncio.gather(*opens, *joins)
    won = [r for r in responses if r.status_code == 201]
    codes = Counter(r.json()["error"]["code"] for r in responses if r.status_code != 201)
    assert len(won) == 5, codes
    assert set(codes) <= {"out_of_stock", "group_full"}
    held = sum([len(await _live_seats(gb, g["_id"])) async for g in gb.db[st.GROUPS].find({"campaign_id": cid})])
    assert held == 8
    assert await gb.groupbuy.store.in_use(stock_scope(cid)) == 8
    assert (await gb.client.get(f"/v1/campaigns/{cid}", headers={**token("ops", "admin")})).json()["stock_left"] == 0
    # units come back when seats are released, and are sold again without overselling
    gb.clock.advance(timedelta(minutes=16))
    await gb.groupbuy.run_due()
    assert await gb.groupbuy.store.in_use(stock_scope(cid)) == 0
    responses = await asyncio.gather(*(gb.client.post(f"/v1/campaigns/{cid}/groups", headers=token(f"late{i}"))
                                       for i in range(30)))
    assert sum(r.status_code == 201 for r in responses) == 8
    assert await gb.groupbuy.store.in_use(stock_scope(cid)) == 8


def _payment(gb, user, group_id, order_id, completed_at):
    return CloudEvent[OrderCompleted].model_validate(
        gb.payment(user, group_id, order_id, completed_at=completed_at))


@pytest.mark.parametrize("paid_before", [0, 1, 2])
async def test_payments_racing_the_deadline_on_two_replicas_give_exactly_one_outcome(gb, paid_before):
    """Each group has 3 seats, ``paid_before`` paid early; the other payments arrive while two
    replicas run the deadline pass. Whatever wins, there is one outcome and every paid order is
    either a formed member, in the refund list, or rejected (refunded) — never lost, never twice."""
    campaign = await gb.campaign(tiers=[{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
                                 group_window_minutes=10, seat_payment_minutes=10, stock=1000)
    replica = Groupbuy(GroupbuyStore(gb.db), gb.svc.runtime.outbox, gb.clock, gb.settings, "urn:pinwheel:groupbuy")
    groups = []
    for g in range(8):
        group_id = (await gb.open(campaign["campaign_id"], f"a{g}"))["group_id"]
        await gb.join(group_id, f"b{g}")
        await gb.join(group_id, f"c{g}")
        groups.append(group_id)
    in_time = gb.clock.now() + timedelta(minutes=9)
    for g, group_id in enumerate(groups):
        for user in [f"a{g}", f"b{g}", f"c{g}"][:paid_before]:
            await gb.groupbuy.on_order_completed(_payment(gb, user, group_id, f"o-{user}", in_time))
    gb.clock.advance(timedelta(minutes=10, seconds=1))
    racing = []
    for g, group_id in enumerate(groups):
        for user in [f"a{g}", f"b{g}", f"c{g}"][paid_before:]:
            racing.append(gb.groupbuy.on_order_completed(_payment(gb, user, group_id, f"o-{user}", in_time)))
    await asyncio.gather(*racing, gb.groupbuy.run_due(), replica.run_due(), replica.run_due())
    await gb.groupbuy.run_due()  # a last pass finishes what the race left (as the loop would)

    for group_id in groups:
        outcomes = [d async for d in gb.db[st.GROUP_OUTCOMES].find({"_id": group_id})]
        assert len(outcomes) == 1
        outcome = outcomes[0]
        paid = {d["order_id"] async for d in gb.db[st.SEAT_OUTCOMES].find({"group_id": group_id, "outcome": "paid"})}
        members = {m["order_id"] for m in outcome["members"]}
        refunds = set(outcome["refund_order_ids"])
        rejected = {d["_id"] async for d in gb.db[st.REJECTIONS].find({"group_id": group_id})}
        assert not members & rejected and not refunds & rejected and not members & refunds
        assert paid <= members | refunds | rejected, "a paid order was lost"
        assert len(outcome["members"]) in (0, 2, 3)
        if outcome["outcome"] == "formed":
            assert len({m["price"] for m in outcome["members"]}) == 1
        assert (await gb.view(group_id))["status"] == outcome["outcome"]
    events = await gb.events()
    closing = Counter(e["subject"] for e in events if e["type"] in ("groupbuy.group_formed", "groupbuy.group_failed"))
    assert closing == dict.fromkeys(groups, 1)


async def test_a_payment_landing_between_the_deadline_read_and_the_outcome_insert_is_refunded_not_lost(gb):
    """The narrowest interleaving, made deterministic: the deadline pass reads the paid seats, a
    payment is stored, then the pass inserts its (now stale) outcome. The sweep after the outcome
    insert finds the paid order the outcome does not account for and rejects it for refund."""
    from services.groupbuy.domain.group import decide_group, paid_seats
    from services.groupbuy.handlers import rules_from_doc

    campaign = await gb.campaign(tiers=[{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}])
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.join(group_id, "dave")
    in_time = gb.clock.now() + timedelta(minutes=1)
    store = gb.groupbuy.store
    stale_seats, stale_outcomes = await store.seats(group_id), await store.seat_outcomes(group_id)
    rules = rules_from_doc(await store.campaign(campaign["campaign_id"]))
    stale = decide_group(rules, paid_seats(stale_seats, stale_outcomes), stale_outcomes, deadline_reached=True)
    assert stale is not None and stale.outcome == "failed" and stale.refund_order_ids == ()
    await gb.groupbuy.on_order_completed(_payment(gb, "dave", group_id, "o-dave", in_time))
    await gb.groupbuy._decide(await store.group(group_id), rules, stale)
    rejection = await gb.db[st.REJECTIONS].find_one({"_id": "o-dave"})
    assert rejection is not None and rejection["reason"] == "group_closed"
    events = await gb.events(lambda es: [e for e in es if e["type"] == "groupbuy.payment_rejected"])
    assert [e["data"]["order_id"] for e in events if e["type"] == "groupbuy.payment_rejected"] == ["o-dave"]
    assert (await gb.view(group_id))["status"] == "failed"
    assert await gb.groupbuy.store.in_use(stock_scope(campaign["campaign_id"])) == 0
