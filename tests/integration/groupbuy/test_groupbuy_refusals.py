"""Every refusal of the group-buy API, with its status and stable code."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support.services import token

from .conftest import ADMIN

pytestmark = pytest.mark.integration


def _code(response):
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize(("change", "code"), [
    ({"tiers": [{"size": 3, "percent_off": 20}, {"size": 2, "percent_off": 30}]}, "tiers_not_increasing"),
    ({"tiers": [{"size": 2, "percent_off": 20}, {"size": 2, "percent_off": 30}]}, "tiers_not_increasing"),
    ({"tiers": [{"size": 2, "percent_off": 30}, {"size": 3, "percent_off": 20}]}, "discounts_not_increasing"),
    ({"tiers": [{"size": 2, "amount_off": 2000}, {"size": 3, "percent_off": 20}]}, "discounts_not_increasing"),
    ({"tiers": [{"size": 2, "amount_off": 20000}]}, "price_below_zero"),
    ({"ends_at": "2020-01-01T00:00:00Z"}, "invalid_window"),
    ({"seat_payment_minutes": 120, "group_window_minutes": 60}, "invalid_window"),
    ({"auto_complete_min": 2}, "invalid_auto_complete_min"),
])
async def test_invalid_campaigns_are_refused_with_a_clear_code(gb, change, code):
    now = gb.clock.now()
    body = {"sku": "s", "list_price": 10000, "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
            "starts_at": now.isoformat(), "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 5, **change}
    response = await gb.client.post("/v1/campaigns", json=body, headers=ADMIN)
    assert _code(response) == (422, code), response.text


@pytest.mark.parametrize("body", [
    {"list_price": 99.5}, {"list_price": "100"}, {"tiers": []}, {"tiers": [{"size": 2}]},
    {"tiers": [{"size": 2, "percent_off": 10, "amount_off": 5}]}, {"starts_at": "2026-11-21T10:00:00"},
    {"stock": 0}, {"currency": "USD"}, {"surprise": 1},
])
async def test_malformed_campaign_bodies_are_422_never_500(gb, body):
    now = gb.clock.now()
    base = {"sku": "s", "list_price": 10000, "tiers": [{"size": 2, "percent_off": 20}],
            "starts_at": now.isoformat(), "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 5}
    response = await gb.client.post("/v1/campaigns", json={**base, **body}, headers=ADMIN)
    assert _code(response) == (422, "validation_error"), response.text


async def test_campaign_endpoints_are_for_operators_and_ids_are_unique(gb):
    campaign = await gb.campaign(campaign_id="c-unique")
    assert campaign["campaign_id"] == "c-unique" and campaign["stock_left"] == 100 and campaign["active"] is True
    assert [t["price"] for t in campaign["tiers"]] == [8000, 7000]
    assert campaign["group_window_minutes"] == 1440 and campaign["seat_payment_minutes"] == 15
    assert _code(await gb.client.get("/v1/campaigns/c-unique", headers=token("carol"))) == (403, "forbidden")
    assert _code(await gb.client.get("/v1/campaigns/c-unique")) == (401, "unauthorized")
    assert _code(await gb.client.get("/v1/campaigns/c-none", headers=ADMIN)) == (404, "campaign_not_found")
    now = gb.clock.now()
    body = {"campaign_id": "c-unique", "sku": "s", "list_price": 100, "tiers": [{"size": 2, "percent_off": 20}],
            "starts_at": now.isoformat(), "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 1}
    assert _code(await gb.client.post("/v1/campaigns", json=body, headers=ADMIN)) == (409, "campaign_exists")


async def test_idempotency_key_returns_the_first_group_and_refuses_another_body(gb):
    campaign = await gb.campaign()
    headers = {**token("carol"), "Idempotency-Key": "open-1"}
    first = await gb.client.post(f"/v1/campaigns/{campaign['campaign_id']}/groups", headers=headers)
    again = await gb.client.post(f"/v1/campaigns/{campaign['campaign_id']}/groups", headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["group_id"] == again.json()["group_id"]
    assert await gb.db.groups.count_documents({}) == 1


async def test_joining_refusals_full_already_in_closed_not_found(gb):
    campaign = await gb.campaign(tiers=[{"size": 2, "percent_off": 20}])
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    assert _code(await gb.join(group_id, "carol")) == (409, "already_member")
    assert (await gb.join(group_id, "dave")).status_code == 201
    assert _code(await gb.join(group_id, "erin")) == (409, "group_full")
    assert _code(await gb.join("g-missing", "erin")) == (404, "group_not_found")
    other = (await gb.open(campaign["campaign_id"], "frank"))["group_id"]
    gb.clock.advance(timedelta(days=1, seconds=1))
    assert _code(await gb.join(other, "erin")) == (410, "group_closed"), "past the deadline, before the scheduler"
    await gb.groupbuy.run_due()
    assert _code(await gb.join(other, "erin")) == (410, "group_closed")


async def test_per_user_limit_new_users_only_and_campaign_window(gb):
    limited = await gb.campaign(per_user_limit=1, new_users_only=True)
    cid = limited["campaign_id"]
    first = (await gb.open(cid, "carol"))["group_id"]
    second = (await gb.open(cid, "dave"))["group_id"]
    assert _code(await gb.join(second, "carol")) == (409, "per_user_limit_reached")
    assert _code(await gb.client.post(f"/v1/campaigns/{cid}/groups", headers=token("carol"))) == (
        409, "per_user_limit_reached")
    # carol's seat is released (unpaid): the limit counts live seats, so she may join another group
    gb.clock.advance(timedelta(minutes=16))
    await gb.groupbuy.run_due()
    third = (await gb.open(cid, "erin"))["group_id"]
    assert (await gb.join(third, "carol")).status_code == 201
    assert _code(await gb.join(first, "carol")) == (409, "already_member")
    # a user with a completed order is no longer new
    await gb.pay("oldtimer", None, "o-earlier")
    from tests.support.services import eventually

    await eventually(lambda: gb.db.buyers.find_one({"_id": "oldtimer"}), message="buyer recorded")
    assert _code(await gb.join(third, "oldtimer")) == (403, "new_users_only")
    assert _code(await gb.client.post(f"/v1/campaigns/{cid}/groups", headers=token("oldtimer"))) == (
        403, "new_users_only")
    later = await gb.campaign(starts_at=(gb.clock.now() + timedelta(days=1)).isoformat())
    assert _code(await gb.client.post(f"/v1/campaigns/{later['campaign_id']}/groups", headers=token("zoe"))) == (
        409, "campaign_not_active")


async def test_out_of_stock_when_every_unit_is_held(gb):
    campaign = await gb.campaign(stock=2)
    group_id = (await gb.open(campaign["campaign_id"], "carol"))["group_id"]
    assert (await gb.join(group_id, "dave")).status_code == 201
    assert _code(await gb.join(group_id, "erin")) == (409, "out_of_stock")
    assert _code(await gb.client.post(f"/v1/campaigns/{campaign['campaign_id']}/groups", headers=token("zoe"))) == (
        409, "out_of_stock")
    view = await gb.view(group_id)
    assert view["seats_left"] == 1, "the refused join gave its seat back"
    assert _code(await gb.join(group_id, "erin")) == (409, "out_of_stock"), "and may try again later"
