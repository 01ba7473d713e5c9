"""The product story end to end: three services as real processes, real Kafka, the real store.

Alice invites Bob and six more friends, becomes a fission expert and earns commissions; a refund takes
one back; Carol's group forms at the 3-person tier; another group fails at its deadline and lists its
paid orders for refund. Inbound events are produced with plain aiokafka, as the user and order systems
would; every outcome is checked through the REST APIs. Then a replay of the whole history changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ops.lag import consumer_lag
from services.ops.replay import replay
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.events import Producer, order_completed, order_refunded, read_all, user_registered
from tests.support.services import eventually
from tests.support.system import System, running_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADMIN = "ops-admin"


async def get_json(system: System, service: str, path: str, user: str, scopes: str = "") -> Any:
    response = await system.call(service, "GET", path, user, scopes)
    assert response.status_code == 200, response.text
    return response.json()


def coupons_of(coupons: dict[str, Any], rule_fragment: str = "", status: str | None = None) -> list[dict[str, Any]]:
    return [c for c in coupons["coupons"]
            if rule_fragment in c["rule"] and (status is None or c["status"] == status)]


async def published(bootstrap: str, topic: str, event_type: str, count: int) -> list[dict[str, Any]] | None:
    found = [event for event in await read_all(bootstrap, topic) if event["type"] == event_type]
    return found if len(found) >= count else None


async def test_the_whole_story(infra, namespace, tmp_path):
    story_started = datetime.now(UTC) - timedelta(seconds=5)
    async with running_system(infra, namespace, tmp_path) as system, \
            Producer(infra.bootstrap_servers, system.topic_prefix) as users:
        kafka = infra.bootstrap_servers
        now = datetime.now(UTC)

        # -- a group that will fail: 1-minute window, 3 needed, only two pay. Opened first so that its
        #    deadline passes while the rest of the story runs.
        quick = {"campaign_id": f"quick-{namespace}", "sku": "tea", "list_price": 10000,
                 "tiers": [{"size": 3, "amount_off": 2500}], "group_window_minutes": 1, "seat_payment_minutes": 1,
                 "starts_at": (now - timedelta(minutes=1)).isoformat(),
                 "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 50}
        created = await system.call("groupbuy", "POST", "/v1/campaigns", ADMIN, "admin", json=quick)
        assert created.status_code == 201, created.text
        doomed = await system.call("groupbuy", "POST", f"/v1/campaigns/{quick['campaign_id']}/groups", "frank")
        assert doomed.status_code == 201, doomed.text
        doomed_id = doomed.json()["group_id"]
        joined = await system.call("groupbuy", "POST", f"/v1/groups/{doomed_id}/members", "grace")
        assert joined.status_code == 201, joined.text
        joined = await system.call("groupbuy", "POST", f"/v1/groups/{doomed_id}/members", "heidi")
        assert joined.status_code == 201, joined.text
        for buyer in ("frank", "grace"):
            await users.send("orders.events", order_completed(buyer, f"o-{buyer}-doomed", 7500, group_id=doomed_id))

        # -- Alice gets a code; Bob registers with it and gets his welcome pack
        await users.send("users.events", user_registered("alice"))
        code_response = await system.call("referral", "POST", "/v1/referral-codes", "alice")
        assert code_response.status_code in (200, 201), code_response.text
        code = code_response.json()["code"]
        again = await system.call("referral", "POST", "/v1/referral-codes", "alice")
        assert again.json()["code"] == code, "the same code after"

        await users.send("users.events", user_registered("bob", referral_code=code, device_id="dev-bob"))

        async def bob_welcome():
            coupons = await get_json(system, "rewards", "/v1/me/coupons", "bob")
            return coupons if len(coupons["coupons"]) == 2 else None

        welcome = await eventually(bob_welcome, timeout=60, message="Bob's welcome pack")
        kinds = sorted((c["kind"], c["value"], c["threshold"]) for c in welcome["coupons"])
        assert kinds == [("amount_off", 2000, 5000), ("free_shipping", 0, 0)]

        # -- Bob's first order, delivered twice, gives Alice exactly one 2000 coupon
        bob_order = order_completed("bob", "o-bob-1", 6800)
        await users.send("orders.events", bob_order)
        await users.send("orders.events", bob_order)

        async def alice_coupons(count: int):
            coupons = await get_json(system, "rewards", "/v1/me/coupons", "alice")
            return coupons if len(coupons["coupons"]) >= count else None

        first = await eventually(lambda: alice_coupons(1), timeout=60, message="Alice's inviter coupon")
        assert [(c["kind"], c["value"], c["threshold"]) for c in first["coupons"]] == [("amount_off", 2000, 0)]

        # -- six more invitees make Alice a fission expert; her 6th and 7th qualified invites earn commissions
        friends = [f"friend-{i}" for i in range(2, 8)]
        for friend in friends:
            await users.send("users.events", user_registered(friend, referral_code=code, device_id=f"dev-{friend}"))
        for friend in friends:
            await eventually(lambda f=friend: _bound(system, f), timeout=60, message=f"{friend} bound")
            await users.send("orders.events", order_completed(friend, f"o-{friend}", 5000))

        async def alice_referrals(qualified: int):
            mine = await get_json(system, "referral", "/v1/me/referrals", "alice")
            return mine if mine["qualified_count"] == qualified else None

        mine = await eventually(lambda: alice_referrals(7), timeout=90, message="7 qualified invites")
        assert mine["milestones_reached"] == ["high_fission_user", "fission_expert"]
        assert len(mine["invitees"]) == 7

        async def commissions(entries: int):
            ledger = await get_json(system, "rewards", "/v1/me/commissions", "alice")
            return ledger if len(ledger["entries"]) >= entries else None

        ledger = await eventually(lambda: commissions(2), timeout=60, message="two commissions")
        assert [(e["kind"], e["amount"]) for e in ledger["entries"]] == [("credit", 500), ("credit", 500)]
        assert ledger["balances"] == {"pending": 1000, "available": 0, "withdrawn": 0, "balance": 1000}
        await eventually(lambda: alice_coupons(7), timeout=60, message="seven inviter coupons")

        # -- a full refund of an order whose referral earned a commission disqualifies it and reverses the
        # commission. Which friends' referrals were the 6th and 7th to qualify is not the order their
        # orders were sent in: each friend is a different Kafka key, and keys are consumed concurrently.
        referral = ledger["entries"][0]["source"]["referral"]
        assert referral.startswith("alice:friend-"), referral
        friend = referral.split(":", 1)[1]
        await users.send("orders.events", order_refunded(friend, f"o-{friend}", 5000))
        ledger = await eventually(lambda: commissions(3), timeout=60, message="the reversal")
        newest = ledger["entries"][0]
        assert (newest["kind"], newest["amount"]) == ("reversal", -500), "newest first"
        assert ledger["balances"]["balance"] == 500
        mine = await eventually(lambda: alice_referrals(6), timeout=60, message="6 qualified after the refund")
        assert sorted(i["status"] for i in mine["invitees"]).count("disqualified") == 1
        assert mine["milestones_reached"] == ["high_fission_user", "fission_expert"], "milestones stay"

        # -- Carol opens a group, Dave and Erin join and pay: it forms at the 3-person tier
        campaign = {"campaign_id": f"tea-{namespace}", "sku": "tea", "list_price": 10000,
                    "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
                    "starts_at": (now - timedelta(minutes=1)).isoformat(),
                    "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 100}
        created = await system.call("groupbuy", "POST", "/v1/campaigns", ADMIN, "admin", json=campaign)
        assert created.status_code == 201, created.text
        opened = await system.call("groupbuy", "POST", f"/v1/campaigns/{campaign['campaign_id']}/groups", "carol")
        group_id = opened.json()["group_id"]
        for member in ("dave", "erin"):
            taken = await system.call("groupbuy", "POST", f"/v1/groups/{group_id}/members", member)
            assert taken.status_code == 201, taken.text
        for member in ("carol", "dave", "erin"):
            await users.send("orders.events", order_completed(member, f"o-{member}-tea", 7000, group_id=group_id))

        async def group_status(group: str, status: str):
            view = await get_json(system, "groupbuy", f"/v1/groups/{group}", "carol")
            return view if view["status"] == status else None

        formed = await eventually(lambda: group_status(group_id, "formed"), timeout=60, message="group formed")
        assert formed["tier_reached"]["size"] == 3
        assert {m["price"] for m in formed["members"]} == {7000}

        async def carol_coupon():
            coupons = await get_json(system, "rewards", "/v1/me/coupons", "carol")
            return coupons["coupons"] or None

        carol = await eventually(carol_coupon, timeout=60, message="Carol's initiator coupon")
        assert [(c["kind"], c["value"], c["threshold"]) for c in carol] == [("amount_off", 500, 0)]

        # -- the doomed group fails at its deadline and lists both paid orders for refund
        await eventually(lambda: group_status(doomed_id, "failed"), timeout=150, message="group failed")
        failed = await eventually(
            lambda: published(kafka, system.topic_prefix + "groupbuy.events", "groupbuy.group_failed", 1),
            timeout=30, message="group_failed published")
        assert sorted(failed[0]["data"]["refund_order_ids"]) == ["o-frank-doomed", "o-grace-doomed"]

        # -- nothing was doubled: Alice has 7 inviter coupons (one revoked), Bob 2, Carol 1
        alice = await get_json(system, "rewards", "/v1/me/coupons", "alice")
        assert len(alice["coupons"]) == 7
        assert sorted(c["status"] for c in alice["coupons"]).count("revoked") == 1

        # -- a replay of the whole history changes nothing (once every consumer has caught up)
        async def caught_up() -> bool:
            overrides = {s: _replay_settings(system, s) for s in ("referral", "groupbuy", "rewards")}
            rows = await consumer_lag(("referral", "groupbuy", "rewards"), overrides)
            return bool(rows) and sum(row.lag for row in rows) == 0

        await eventually(caught_up, timeout=60, message="every consumer caught up")
        for service in ("referral", "groupbuy", "rewards"):
            summary = await replay(service, story_started, **_replay_settings(system, service))
            assert summary.events_read > 0, service
            assert summary.effects_applied == 0, (service, summary.as_dict())
            assert summary.failures == 0, (service, summary.as_dict())
        assert len((await get_json(system, "rewards", "/v1/me/coupons", "alice"))["coupons"]) == 7


async def _bound(system: System, friend: str) -> bool:
    mine = await get_json(system, "referral", "/v1/me/referrals", "alice")
    return len(mine["invitees"]) >= int(friend.split("-")[1])


def _replay_settings(system: System, service: str) -> dict[str, Any]:
    return {"kafka_bootstrap_servers": system.infra.bootstrap_servers, "mongodb_uri": system.infra.mongodb_uri,
            "topic_prefix": system.topic_prefix, "mongodb_database": system.database(service),
            "consumer_group": f"{system.namespace}-{service}", "environment": "test",
            "jwt_secret": LOCAL_DEV_JWT_SECRET}
