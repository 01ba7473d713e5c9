"""Every transition of a group on the real servers: opening, joining, paying, forming, failing,
releasing, rejecting payments; events published through the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.groupbuy.adapters import store as st
from shared.inbox import redeliveries
from tests.support.services import eventually, redelivered

from .conftest import of_type

pytestmark = pytest.mark.integration


async def test_three_person_group_forms_at_once_with_tier_and_each_members_price(gb):
    campaign = await gb.campaign()
    opened = await gb.open(campaign["campaign_id"], "carol")
    group_id = opened["group_id"]
    assert opened["members"][0]["user"] == "carol" and opened["members"][0]["status"] == "held"
    assert opened["seats_left"] == 2 and opened["price_now"] == 8000 and opened["tier_reached"] is None
    assert (await gb.join(group_id, "dave")).status_code == 201
    third = await gb.join(group_id, "erin")
    assert third.status_code == 201, third.text
    assert third.json()["seats_left"] == 0
    assert {m["user"] for m in third.json()["members"]} == {"c***l", "d***e", "erin"}

    for user, order in (("carol", "o-c"), ("dave", "o-d")):
        await gb.pay(user, group_id, order)
    two_paid = await eventually(lambda: _view_if(gb, group_id, lambda v: v["seats_paid"] == 2), message="2 paid")
    assert two_paid["status"] == "open" and two_paid["tier_reached"]["size"] == 2 and two_paid["price_now"] == 8000
    await gb.pay("erin", group_id, "o-e")
    formed = await eventually(lambda: _view_if(gb, group_id, lambda v: v["status"] == "formed"), message="formed")
    assert formed["tier_reached"] == {"size": 3, "percent_off": 30, "amount_off": None, "price": 7000}
    assert [m["price"] for m in formed["members"]] == [7000, 7000, 7000]

    events = await gb.events(lambda es: of_type(es, "groupbuy.group_formed"))
    assert len(of_type(events, "groupbuy.group_opened")) == 1
    assert sorted(e["data"]["user_id"] for e in of_type(events, "groupbuy.member_joined")) == ["carol", "dave", "erin"]
    assert sorted(e["data"]["order_id"] for e in of_type(events, "groupbuy.member_paid")) == ["o-c", "o-d", "o-e"]
    (formed_event,) = of_type(events, "groupbuy.group_formed")
    assert formed_event["data"]["tier"] == {"size": 3, "percent_off": 30}
    assert formed_event["data"]["initiator_id"] == "carol" and formed_event["data"]["list_price"] == 10000
    assert {(m["user_id"], m["order_id"], m["price"]) for m in formed_event["data"]["members"]} == {
        ("carol", "o-c", 7000), ("dave", "o-d", 7000), ("erin", "o-e", 7000)}
    assert all(e["subject"] == group_id for e in events)
    campaign_now = (await gb.client.get(f"/v1/campaigns/{campaign['campaign_id']}", headers=_admin())).json()
    assert campaign_now["stock_left"] == 97


async def test_at_the_deadline_the_group_forms_at_the_best_tier_reached_and_unpaid_seats_are_released(gb):
    campaign = await gb.campaign(stock=10)
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.join(group_id, "dave")
    await gb.join(group_id, "erin")
    await gb.groupbuy.on_order_completed(_event(gb, "carol", group_id, "o-1"))
    await gb.groupbuy.on_order_completed(_event(gb, "dave", group_id, "o-2"))
    gb.clock.advance(timedelta(hours=24, seconds=1))
    done = await gb.groupbuy.run_due()
    assert done["groups_closed"] == 1
    view = await gb.view(group_id)
    assert view["status"] == "formed" and view["tier_reached"]["size"] == 2
    assert [(m["seat"], m["price"]) for m in view["members"]] == [(1, 8000), (2, 8000)]
    events = await gb.events(lambda es: of_type(es, "groupbuy.group_formed") and of_type(es, "groupbuy.seat_released"))
    (released,) = of_type(events, "groupbuy.seat_released")
    assert released["data"]["user_id"] == "erin"
    assert of_type(events, "groupbuy.group_formed")[0]["data"]["tier"]["size"] == 2
    campaign_now = (await gb.client.get(f"/v1/campaigns/{campaign['campaign_id']}", headers=_admin())).json()
    assert campaign_now["stock_left"] == 8, "erin's unit came back, the two sold stay sold"


async def test_at_the_deadline_a_group_below_the_smallest_tier_fails_with_every_paid_order_to_refund(gb):
    campaign = await gb.campaign(tiers=[{"size": 3, "amount_off": 2000}, {"size": 4, "amount_off": 3000}], stock=5)
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.join(group_id, "dave")
    await gb.join(group_id, "erin")
    await gb.groupbuy.on_order_completed(_event(gb, "carol", group_id, "o-1", amount=8000))
    await gb.groupbuy.on_order_completed(_event(gb, "dave", group_id, "o-2", amount=8000))
    gb.clock.advance(timedelta(days=1, minutes=1))
    await gb.groupbuy.run_due()
    assert (await gb.view(group_id))["status"] == "failed"
    events = await gb.events(lambda es: of_type(es, "groupbuy.group_failed"))
    (failed,) = of_type(events, "groupbuy.group_failed")
    assert sorted(failed["data"]["refund_order_ids"]) == ["o-1", "o-2"]
    assert {(m["user_id"], m["order_id"], m["amount"]) for m in failed["data"]["paid_members"]} == {
        ("carol", "o-1", 8000), ("dave", "o-2", 8000)}
    assert failed["data"]["reason"] == "not_enough_paid_members"
    campaign_now = (await gb.client.get(f"/v1/campaigns/{campaign['campaign_id']}", headers=_admin())).json()
    assert campaign_now["stock_left"] == 5, "a failed group gives every unit back"
    again = await gb.groupbuy.run_due()
    assert again == {"seats_released": 0, "groups_closed": 0, "finalized": 0}


async def test_auto_complete_min_forms_at_the_smallest_tier_instead_of_failing(gb):
    campaign = await gb.campaign(tiers=[{"size": 3, "percent_off": 10}, {"size": 5, "percent_off": 25}],
                                 auto_complete_min=2)
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.join(group_id, "dave")
    for user, order in (("carol", "o-1"), ("dave", "o-2")):
        await gb.groupbuy.on_order_completed(_event(gb, user, group_id, order))
    gb.clock.advance(timedelta(days=2))
    await gb.groupbuy.run_due()
    view = await gb.view(group_id)
    assert view["status"] == "formed" and view["tier_reached"]["size"] == 3
    assert [m["price"] for m in view["members"]] == [9000, 9000]


async def test_an_unpaid_seat_is_released_after_its_window_taken_again_and_the_late_payment_rejected(gb):
    campaign = await gb.campaign()
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    joined = await gb.join(group_id, "dave")
    assert joined.json()["members"][1]["payment_deadline"] is not None
    gb.clock.advance(timedelta(minutes=15, seconds=1))
    done = await gb.groupbuy.run_due()
    assert done["seats_released"] == 2  # carol's seat too: nobody paid within 15 minutes
    view = await gb.view(group_id)
    assert view["members"] == [] and view["seats_left"] == 3 and view["status"] == "open"
    again = await gb.join(group_id, "erin")
    assert again.status_code == 201
    assert [m["seat"] for m in again.json()["members"]] == [1], "the released slot is taken again"
    seats = await gb.db[st.SEATS].find({"group_id": group_id}).to_list()
    assert sorted(s["_id"].split(":", 1)[1] for s in seats) == ["1:1", "1:2", "2:1"]
    assert (await gb.join(group_id, "dave")).json()["error"]["code"] == "already_member"
    await gb.pay("dave", group_id, "o-late", completed_at=gb.clock.now())
    events = await gb.events(lambda es: of_type(es, "groupbuy.payment_rejected"))
    (rejected,) = of_type(events, "groupbuy.payment_rejected")
    assert rejected["data"]["order_id"] == "o-late" and rejected["data"]["reason"] == "seat_released"
    assert sorted(e["data"]["user_id"] for e in of_type(events, "groupbuy.seat_released")) == ["carol", "dave"]


async def test_a_payment_after_its_window_releases_the_seat_and_is_rejected_even_before_the_scheduler_runs(gb):
    campaign = await gb.campaign()
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    late = gb.clock.now() + timedelta(minutes=16)
    await gb.groupbuy.on_order_completed(_event(gb, "carol", group_id, "o-late", completed_at=late))
    rejection = await gb.db[st.REJECTIONS].find_one({"_id": "o-late"})
    assert rejection["reason"] == "payment_window_expired"
    assert (await gb.db[st.SEAT_OUTCOMES].find_one({"group_id": group_id}))["outcome"] == "released"


async def test_payments_from_strangers_for_unknown_or_closed_groups_are_rejected_never_lost(gb):
    campaign = await gb.campaign()
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.pay("mallory", group_id, "o-stranger")
    await gb.pay("carol", "g-nope", "o-unknown")
    await gb.pay("carol", group_id, "o-carol")
    await gb.pay("carol", group_id, "o-carol-twice")
    events = await gb.events(lambda es: len(of_type(es, "groupbuy.payment_rejected")) == 3
                             and of_type(es, "groupbuy.member_paid"))
    reasons = {e["data"]["order_id"]: e["data"]["reason"] for e in of_type(events, "groupbuy.payment_rejected")}
    assert reasons == {"o-stranger": "not_a_member", "o-unknown": "unknown_group",
                       "o-carol-twice": "seat_already_paid"}
    gb.clock.advance(timedelta(days=1, seconds=1))
    await gb.groupbuy.run_due()
    assert (await gb.view(group_id))["status"] == "failed"
    await gb.groupbuy.on_order_completed(_event(gb, "carol", group_id, "o-after-close"))
    assert (await gb.db[st.REJECTIONS].find_one({"_id": "o-after-close"}))["reason"] in (
        "group_closed", "seat_already_paid")


async def test_duplicate_and_replayed_order_events_change_nothing_twice(gb):
    campaign = await gb.campaign()
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    await gb.join(group_id, "dave")
    payment = gb.payment("carol", group_id, "o-1")
    for _ in range(3):
        await gb.producer.send("orders.events", payment)
    replay = {**payment, "id": "another-delivery-of-o-1"}
    await gb.producer.send("orders.events", replay)
    stranger = gb.payment("mallory", group_id, "o-m")
    await gb.producer.send("orders.events", stranger)
    await gb.producer.send("orders.events", stranger)
    await eventually(lambda: redelivered(gb.db, stranger["id"], 1), message="all handled")
    events = await gb.events()
    assert [e["data"]["order_id"] for e in of_type(events, "groupbuy.member_paid")] == ["o-1"]
    assert [e["data"]["order_id"] for e in of_type(events, "groupbuy.payment_rejected")] == ["o-m"]
    assert await redeliveries(gb.db, payment["id"]) == 2
    assert await gb.db[st.BUYERS].count_documents({}) == 2


async def test_the_open_groups_list_shows_joinable_groups_soonest_to_close_first(gb):
    campaign = await gb.campaign(tiers=[{"size": 2, "percent_off": 20}])
    cid = campaign["campaign_id"]
    first = (await gb.open(cid, "carol"))["group_id"]
    gb.clock.advance(timedelta(minutes=1))
    second = (await gb.open(cid, "dave"))["group_id"]
    gb.clock.advance(timedelta(minutes=1))
    full = (await gb.open(cid, "erin"))["group_id"]
    assert (await gb.join(full, "frank")).status_code == 201
    listed = await gb.client.get(f"/v1/campaigns/{cid}/groups?status=open", headers=_user("zoe"))
    assert listed.status_code == 200
    assert [g["group_id"] for g in listed.json()["groups"]] == [first, second]
    assert listed.json()["groups"][0]["members"][0]["user"] == "c***l"
    bad = await gb.client.get(f"/v1/campaigns/{cid}/groups?status=formed", headers=_user("zoe"))
    assert bad.status_code == 422


def _admin():
    from .conftest import ADMIN

    return ADMIN


def _user(name):
    from tests.support.services import token

    return token(name)


def _event(gb, user, group_id, order_id, amount=7000, completed_at=None):
    from shared.events import CloudEvent
    from shared.events.schemas import OrderCompleted

    raw = gb.payment(user, group_id, order_id, amount=amount, completed_at=completed_at)
    return CloudEvent[OrderCompleted].model_validate(raw)


async def _view_if(gb, group_id, condition):
    view = await gb.view(group_id)
    return view if condition(view) else None
