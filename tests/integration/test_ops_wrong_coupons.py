"""The runbook "a bad deploy issued wrong coupons between 10:00 and 10:20; the rule was fixed":
revoke what the bad edition issued, replay the window with the fixed edition, nothing else changes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.ops.coupons import revoke_coupons
from services.ops.replay import replay
from services.rewards.bootstrap import build_app as build_rewards
from services.rewards.settings import RewardsSettings
from tests.support.events import Producer, cloud_event, now_rfc3339
from tests.support.services import eventually, running, settings_for, token

pytestmark = pytest.mark.integration


def overrides(settings: RewardsSettings, **extra: object) -> dict[str, object]:
    base = {name: getattr(settings, name) for name in (
        "kafka_bootstrap_servers", "mongodb_uri", "topic_prefix", "mongodb_database", "consumer_group",
        "environment", "jwt_secret")}
    return {**base, **extra}


async def test_wrong_coupons_are_revoked_and_reissued_by_the_fixed_rule(infra, namespace):
    inviter = f"alice-{namespace}"
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    bad = settings_for(RewardsSettings, infra, namespace, inviter_coupon_value=20000)
    qualified = [cloud_event("referral.qualified", {
        "inviter_id": inviter, "invitee_id": f"friend{i}-{namespace}", "order_id": f"o{i}-{namespace}",
        "qualified_count": i + 1, "qualified_at": now_rfc3339(), "source_event_id": f"order-{i}"},
        source="urn:pinwheel:referral") for i in range(3)]
    async with running(build_rewards, bad) as svc, Producer(infra.bootstrap_servers, bad.topic_prefix) as producer:
        for event in qualified:
            await producer.send("referral.events", event, key=inviter)

        async def three_coupons():
            coupons = (await svc.client.get("/v1/me/coupons", headers=token(inviter))).json()["coupons"]
            return coupons if len(coupons) == 3 else None

        wrong = await eventually(three_coupons, message="the bad deploy's coupons")
        assert {c["value"] for c in wrong} == {20000}
    window_end = datetime.now(UTC) + timedelta(seconds=1)

    # the fix is deployed: the right value, and a new edition of the rule
    fixed = overrides(bad, inviter_coupon_value=2000, rule_editions={"inviter_coupon": 2})
    fixed_settings = settings_for(RewardsSettings, infra, namespace, inviter_coupon_value=2000,
                                  rule_editions={"inviter_coupon": 2})
    dry = await revoke_coupons("inviter_coupon", window_start, window_end, reason="bad-deploy", dry_run=True,
                               **fixed)
    assert (dry.matched, dry.revoked) == (3, 3)
    done = await revoke_coupons("inviter_coupon", window_start, window_end, reason="bad-deploy", **fixed)
    assert (done.matched, done.revoked, done.kept_redeemed) == (3, 3, [])
    again = await revoke_coupons("inviter_coupon", window_start, window_end, reason="bad-deploy", **fixed)
    assert (again.revoked, again.already_revoked) == (0, 3), "revoking twice changes nothing"

    preview = await replay("rewards", window_start, window_end, dry_run=True, **fixed)
    assert preview.events_with_effects == 3
    summary = await replay("rewards", window_start, window_end, **fixed)
    assert summary.events_with_effects == 3 and summary.failures == 0
    assert (await replay("rewards", window_start, window_end, **fixed)).effects_applied == 0

    async with running(build_rewards, fixed_settings) as svc:
        coupons = (await svc.client.get("/v1/me/coupons", headers=token(inviter))).json()["coupons"]
        assert Counter((c["value"], c["status"]) for c in coupons) == {(20000, "revoked"): 3, (2000, "available"): 3}
