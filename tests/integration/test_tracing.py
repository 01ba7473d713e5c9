"""One W3C trace id follows Bob's order to Alice's coupon, across services and Kafka."""

from __future__ import annotations

import pytest

from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from services.rewards.bootstrap import build_app as build_rewards
from services.rewards.settings import RewardsSettings
from tests.support.events import Producer, order_completed, read_all, user_registered
from tests.support.services import eventually, running, settings_for, token

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_the_trace_of_an_order_reaches_the_inviters_coupon(infra, namespace):
    referral_settings = settings_for(ReferralSettings, infra, namespace)
    rewards_settings = settings_for(RewardsSettings, infra, namespace)
    alice, bob = f"alice-{namespace}", f"bob-{namespace}"
    async with running(build_referral, referral_settings) as referral, \
            running(build_rewards, rewards_settings) as rewards, \
            Producer(infra.bootstrap_servers, referral_settings.topic_prefix) as producer:
        http_trace = "0af7651916cd43dd8448eb211c80319c"
        created = await referral.client.post("/v1/referral-codes", headers={
            **token(alice), "traceparent": f"00-{http_trace}-b7ad6b7169203331-01"})
        assert created.headers["traceparent"].split("-")[1] == http_trace
        await producer.send("users.events", user_registered(bob, referral_code=created.json()["code"]))
        order = order_completed(bob, f"o-{namespace}", 5000)
        order["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        await producer.send("orders.events", order)

        async def alice_coupon():
            response = await rewards.client.get("/v1/me/coupons", headers=token(alice))
            return response.json()["coupons"] or None

        await eventually(alice_coupon, timeout=60, message="Alice's coupon")
        prefix = referral_settings.topic_prefix

        async def published():  # the coupon is visible when stored; its event leaves a moment later
            qualified = [e for e in await read_all(infra.bootstrap_servers, prefix + "referral.events")
                         if e["type"] == "referral.qualified"]
            issued = [e for e in await read_all(infra.bootstrap_servers, prefix + "rewards.events")
                      if e["type"] == "rewards.coupon_issued" and e["data"]["user_id"] == alice]
            return (qualified, issued) if qualified and issued else None

        qualified, issued = await eventually(published, message="both events published")
        assert len(qualified) == 1 and len(issued) == 1
        assert qualified[0]["traceparent"].split("-")[1] == TRACE_ID
        assert issued[0]["traceparent"].split("-")[1] == TRACE_ID
        assert issued[0]["data"]["source_event_id"] == qualified[0]["id"]
