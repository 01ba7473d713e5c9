"""Prometheus metrics move when the services do things (the names the Grafana dashboard reads)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from services.groupbuy.bootstrap import build_app as build_groupbuy
from services.groupbuy.settings import GroupbuySettings
from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from services.rewards.bootstrap import build_app as build_rewards
from services.rewards.settings import RewardsSettings
from tests.support.events import Producer, cloud_event, now_rfc3339, user_registered
from tests.support.services import eventually, running, settings_for, token

pytestmark = pytest.mark.integration


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def metric(svc, name: str, **labels: str) -> float:
    return sample((await svc.client.get("/metrics")).text, name, **labels)


async def test_referral_counts_bindings_and_consumed_events(infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        code = (await svc.client.post("/v1/referral-codes", headers=token(f"a-{namespace}"))).json()["code"]
        bound_before = await metric(svc, "pinwheel_referral_bindings_total", outcome="bound")
        handled_before = await metric(svc, "pinwheel_events_consumed_total", type="user.registered",
                                      outcome="handled")
        await p.send("users.events", user_registered(f"b-{namespace}", referral_code=code))

        async def moved():
            return await metric(svc, "pinwheel_referral_bindings_total", outcome="bound") == bound_before + 1

        await eventually(moved, message="bindings counter moved")

        async def handled():  # counted when the handler has returned, a moment after the binding
            return await metric(svc, "pinwheel_events_consumed_total", type="user.registered",
                                outcome="handled") == handled_before + 1

        await eventually(handled, message="consumed counter moved")
        assert await metric(svc, "pinwheel_http_requests_total", route="/v1/referral-codes", method="POST") >= 1


async def test_groupbuy_counts_groups_opened(infra, namespace):
    settings = settings_for(GroupbuySettings, infra, namespace)
    now = datetime.now(UTC)
    async with running(build_groupbuy, settings) as svc:
        campaign = {"campaign_id": f"c-{namespace}", "sku": "s", "list_price": 1000, "stock": 10,
                    "tiers": [{"size": 2, "percent_off": 10}], "starts_at": (now - timedelta(minutes=1)).isoformat(),
                    "ends_at": (now + timedelta(days=1)).isoformat()}
        assert (await svc.client.post("/v1/campaigns", json=campaign, headers=token("ops", "admin"))).status_code == 201
        before = await metric(svc, "pinwheel_groupbuy_groups_opened_total")
        opened = await svc.client.post(f"/v1/campaigns/c-{namespace}/groups", headers=token(f"u-{namespace}"))
        assert opened.status_code == 201
        assert await metric(svc, "pinwheel_groupbuy_groups_opened_total") == before + 1


async def test_rewards_counts_coupons_issued_by_rule_once_under_duplicates(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    async with running(build_rewards, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        before = await metric(svc, "pinwheel_rewards_coupons_issued_total")
        # counters are per process and the suite shares one: compare with the value before
        handled_before = await _taken(svc)
        bound = cloud_event("referral.bound", {
            "inviter_id": f"a-{namespace}", "invitee_id": f"b-{namespace}", "code": "ABCDEFGH",
            "bound_at": now_rfc3339(), "channel": "registration"}, source="urn:pinwheel:referral")
        for _ in range(3):
            await p.send("referral.events", bound, key=f"a-{namespace}")

        async def two_coupons():
            response = await svc.client.get("/v1/me/coupons", headers=token(f"b-{namespace}"))
            return len(response.json()["coupons"]) == 2

        await eventually(two_coupons, message="welcome pack issued")
        await eventually(lambda: _handled(svc, handled_before + 3), message="all three deliveries handled")
        assert await metric(svc, "pinwheel_rewards_coupons_issued_total") == before + 2, "once per coupon"


async def _taken(svc) -> float:
    """Deliveries of referral.bound taken: handled, or skipped as a duplicate of one handled lately."""
    return sum([await metric(svc, "pinwheel_events_consumed_total", type="referral.bound", outcome=outcome)
                for outcome in ("handled", "duplicate")])


async def _handled(svc, count: int) -> bool:
    return await _taken(svc) >= count


async def test_consumer_lag_is_exported_per_partition(infra, namespace):
    settings = settings_for(ReferralSettings, infra, namespace)
    async with running(build_referral, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        await p.send("users.events", user_registered(f"u-{namespace}"))

        async def reported():
            text = (await svc.client.get("/metrics")).text
            return [line for line in text.splitlines()
                    if line.startswith("pinwheel_consumer_lag{") and 'topic="users.events"' in line
                    and 'service="referral"' in line]

        lines = await eventually(reported, timeout=20, message="lag gauge exported")
        assert len(lines) == settings.topic_partitions
        await eventually(lambda: _lag_total(svc), timeout=20, message="lag back to zero")


async def _lag_total(svc) -> bool:
    text = (await svc.client.get("/metrics")).text
    return sample(text, "pinwheel_consumer_lag", service="referral", topic="users.events") == 0
