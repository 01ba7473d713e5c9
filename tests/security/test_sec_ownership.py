"""Cross-user attacks: Bob and Eve try to read or change Alice's referrals, coupons, commissions,
withdrawals and seats through ids in paths, bodies and query strings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.events import Producer, order_completed, user_registered
from tests.support.security import Trio, assert_error_shape
from tests.support.services import eventually, token, unique

pytestmark = pytest.mark.integration


async def _bind_via_registration(trio: Trio, inviter: str, invitee: str) -> str:
    code = (await trio.referral.client.post("/v1/referral-codes", headers=token(inviter))).json()["code"]
    async with Producer(trio.referral.runtime.settings.kafka_bootstrap_servers, f"{trio.namespace}.") as producer:
        await producer.send("users.events", user_registered(invitee, referral_code=code))
    return code


async def _coupons(trio: Trio, user: str, **params: Any) -> list[dict[str, Any]]:
    response = await trio.rewards.client.get("/v1/me/coupons", headers=token(user), params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["coupons"])


async def test_query_and_body_user_ids_never_show_or_change_another_users_referrals(trio: Trio) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    await _bind_via_registration(trio, alice, bob)

    async def alice_sees_bob() -> Any:
        body = (await trio.referral.client.get("/v1/me/referrals", headers=token(alice))).json()
        return body if body["invitees"] else None

    mine = await eventually(alice_sees_bob, message="alice's invitee")
    assert [i["invitee"] for i in mine["invitees"]] != [bob]  # masked even for the inviter
    for params in ({"user_id": alice}, {"inviter_id": alice}, {"sub": alice}):
        theirs = await trio.referral.client.get("/v1/me/referrals", headers=token(eve), params=params)
        assert theirs.status_code == 200 and theirs.json()["invitees"] == [], theirs.text
    # binding someone else, or binding "as" someone else: the body carries only the code
    stolen = await trio.referral.client.post("/v1/referrals", headers=token(eve),
                                             json={"code": "ABCDEFGH", "invitee_id": bob, "user_id": bob})
    assert_error_shape(stolen, 422)
    # an inviter's own code as seen by others never reveals the owner
    code_of_eve = (await trio.referral.client.post("/v1/referral-codes", headers=token(eve),
                                                   params={"user_id": alice})).json()["code"]
    code_of_alice = (await trio.referral.client.post("/v1/referral-codes", headers=token(alice))).json()["code"]
    assert code_of_eve != code_of_alice
    # the operator review of alice's invitee needs admin
    review = await trio.referral.client.post(f"/v1/referrals/{bob}/review", headers=token(eve),
                                             json={"decision": "reject"})
    assert_error_shape(review, 403)


async def test_another_users_coupons_cannot_be_listed_reserved_or_redeemed(trio: Trio) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    await _bind_via_registration(trio, alice, bob)  # bob gets the welcome pack
    bobs = await eventually(lambda: _coupons(trio, bob), message="bob's welcome pack")
    bob_code = next(c["code"] for c in bobs if c["kind"] == "amount_off")

    assert await _coupons(trio, eve, user_id=bob) == []  # a query string cannot select another user
    checkout = token("checkout", "service")
    # checkout asking to reserve bob's coupon for eve's order is refused
    for_eve = await trio.rewards.client.post(f"/v1/coupons/{bob_code}/redemptions", headers=checkout,
                                             json={"order_id": unique("o"), "user_id": eve, "order_amount": 9000})
    assert assert_error_shape(for_eve, 403)["code"] == "coupon_not_owned"
    # eve herself cannot call checkout
    direct = await trio.rewards.client.post(f"/v1/coupons/{bob_code}/redemptions", headers=token(eve),
                                            json={"order_id": unique("o"), "user_id": eve, "order_amount": 9000})
    assert_error_shape(direct, 403)
    # eve's completed order listing bob's code does not redeem it
    async with Producer(trio.rewards.runtime.settings.kafka_bootstrap_servers, f"{trio.namespace}.") as producer:
        await producer.send("orders.events", order_completed(eve, amount=9000, coupon_codes=[bob_code]))
        marker = order_completed(eve, amount=100)
        await producer.send("orders.events", marker)
    await eventually(lambda: trio.rewards.db["inbox"].find_one({"_id": marker["id"]}), message="marker processed")
    after = {c["code"]: c for c in await _coupons(trio, bob)}
    assert after[bob_code]["status"] == "available", after[bob_code]
    assert await _coupons(trio, eve) == []


async def test_commissions_and_withdrawals_only_ever_touch_the_callers_ledger(trio: Trio) -> None:
    alice, eve = unique("alice"), unique("eve")
    for params in ({"user_id": alice}, {"beneficiary": alice}):
        response = await trio.rewards.client.get("/v1/me/commissions", headers=token(eve), params=params)
        assert response.status_code == 200
        assert response.json()["entries"] == [] and response.json()["balances"]["available"] == 0
    refused = await trio.rewards.client.post("/v1/me/withdrawals", headers=token(eve),
                                             json={"amount": 1000, "user_id": alice})
    assert_error_shape(refused, 422)  # unknown fields are refused, not ignored
    plain = await trio.rewards.client.post("/v1/me/withdrawals", headers=token(eve), json={"amount": 1000})
    assert assert_error_shape(plain, 409)["code"] == "insufficient_balance"  # eve's own (empty) ledger


async def test_group_views_mask_other_members_and_seats_cannot_be_taken_for_someone_else(trio: Trio) -> None:
    campaign_id = unique("c-")
    campaign = {"campaign_id": campaign_id, "sku": "tea", "list_price": 10000, "stock": 100,
                "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
                "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}
    created = await trio.groupbuy.client.post("/v1/campaigns", headers=token("ops", "admin"), json=campaign)
    assert created.status_code == 201, created.text
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    opened = await trio.groupbuy.client.post(f"/v1/campaigns/{campaign_id}/groups", headers=token(alice),
                                             params={"user_id": bob})
    assert opened.status_code == 201
    group_id = opened.json()["group_id"]
    assert opened.json()["members"][0]["user"] == alice  # the caller, not the query string's user
    joined = await trio.groupbuy.client.post(f"/v1/groups/{group_id}/members", headers=token(bob),
                                             params={"user_id": eve})
    assert joined.status_code == 201
    seen_by_eve = (await trio.groupbuy.client.get(f"/v1/groups/{group_id}", headers=token(eve))).json()
    text = json.dumps(seen_by_eve)
    assert alice not in text and bob not in text, text  # nobody's id in clear
    assert not any(member["you"] for member in seen_by_eve["members"])
    listed = json.dumps((await trio.groupbuy.client.get(f"/v1/campaigns/{campaign_id}/groups",
                                                        headers=token(eve))).json())
    assert alice not in listed and bob not in listed
    # a user cannot read the operator view of the campaign (stock, budget)
    assert_error_shape(await trio.groupbuy.client.get(f"/v1/campaigns/{campaign_id}", headers=token(eve)), 403)


async def test_another_users_idempotency_key_never_replays_their_response(trio: Trio) -> None:
    campaign_id = unique("c-")
    campaign = {"campaign_id": campaign_id, "sku": "tea", "list_price": 10000, "stock": 100,
                "tiers": [{"size": 2, "percent_off": 20}],
                "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}
    assert (await trio.groupbuy.client.post("/v1/campaigns", headers=token("ops", "admin"),
                                            json=campaign)).status_code == 201
    alice, eve = unique("alice"), unique("eve")
    key = {"Idempotency-Key": "shared-key-1"}
    first = await trio.groupbuy.client.post(f"/v1/campaigns/{campaign_id}/groups", headers=token(alice) | key)
    second = await trio.groupbuy.client.post(f"/v1/campaigns/{campaign_id}/groups", headers=token(eve) | key)
    assert first.status_code == second.status_code == 201
    assert second.json()["group_id"] != first.json()["group_id"]
    assert second.json()["members"][0]["user"] == eve
    assert "idempotent-replayed" not in second.headers
