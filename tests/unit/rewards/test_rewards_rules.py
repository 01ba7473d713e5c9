"""Reward rules and budgets (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.rewards.domain.budgets import Budget, BudgetUse, after_claim, budgets_for, fits
from services.rewards.domain.rules import RuleConfig, coupon_code, rewards_for
from shared.events import schemas as s

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
CFG = RuleConfig()


def bound(device: str | None = "dev-1") -> s.ReferralBound:
    return s.ReferralBound(inviter_id="ann", invitee_id="bob", code="ANN1", bound_at=T0, channel="app",
                           device_id=device)


def qualified(count: int) -> s.ReferralQualified:
    return s.ReferralQualified(inviter_id="ann", invitee_id="bob", order_id="o-1", qualified_count=count,
                               qualified_at=T0, source_event_id="order-evt")


def test_binding_grants_the_invitee_a_welcome_pack_valid_seven_days():
    rewards = rewards_for("referral.bound", bound(), "evt-1", CFG)
    assert [(r.rule, r.beneficiary, r.grant.kind, r.grant.value, r.grant.threshold) for r in rewards] == [
        ("welcome_coupon", "bob", "amount_off", 2000, 5000),
        ("welcome_free_shipping", "bob", "free_shipping", 0, 0),
    ]
    assert all(r.grant.valid_for == timedelta(days=7) for r in rewards)
    assert rewards[0].reward_id == "welcome_coupon:evt-1:bob"
    assert rewards[0].referral == "ann:bob" and rewards[0].device_id == "dev-1"


@pytest.mark.parametrize(("count", "rules"), [
    (1, ["inviter_coupon"]), (5, ["inviter_coupon"]), (6, ["inviter_coupon", "expert_commission"]),
    (40, ["inviter_coupon", "expert_commission"]),
])
def test_qualification_grants_the_inviter_a_coupon_and_past_expert_a_commission(count, rules):
    rewards = rewards_for("referral.qualified", qualified(count), "evt-2", CFG)
    assert [r.rule for r in rewards] == rules
    assert all(r.beneficiary == "ann" for r in rewards)
    assert rewards[0].value == 2000 and rewards[0].grant.threshold == 0
    if len(rewards) == 2:
        assert rewards[1].value == 500 and rewards[1].grant.hold == timedelta(days=7)


def test_group_formed_grants_the_initiator_a_coupon_in_the_campaign():
    formed = s.GroupFormed(group_id="g-1", campaign_id="c-9", initiator_id="cat", tier=s.Tier(size=2, percent_off=20),
                           list_price=10000, members=[], formed_at=T0)
    [reward] = rewards_for("groupbuy.group_formed", formed, "evt-3", CFG)
    assert (reward.rule, reward.beneficiary, reward.value, reward.campaign) == (
        "initiator_coupon", "cat", 500, "groupbuy:c-9")


def test_disabled_rules_and_unrelated_events_grant_nothing():
    cfg = RuleConfig(disabled_rules=frozenset({"expert_commission", "welcome_free_shipping"}))
    assert [r.rule for r in rewards_for("referral.qualified", qualified(9), "e", cfg)] == ["inviter_coupon"]
    assert [r.rule for r in rewards_for("referral.bound", bound(), "e", cfg)] == ["welcome_coupon"]
    assert rewards_for("referral.flagged", object(), "e", CFG) == []


def test_coupon_codes_are_stable_short_and_distinct():
    assert coupon_code("a:b:c") == coupon_code("a:b:c")
    assert coupon_code("a:b:c") != coupon_code("a:b:d")
    assert len(coupon_code("x")) == 16 and coupon_code("x").startswith("PW")


def test_budgets_apply_by_scope_campaign_and_rule_narrowest_first():
    welcome, _shipping = rewards_for("referral.bound", bound(), "e", CFG)
    budgets = [Budget(scope="day", max_amount=10_000), Budget(scope="user", max_count=1),
               Budget(scope="device", max_count=3), Budget(scope="campaign", campaign="groupbuy:c-9", max_count=1),
               Budget(scope="user", rules=["inviter_coupon"], max_count=1, name="inviter_per_user")]
    assert [key for key, _ in budgets_for(welcome, budgets)] == ["user:bob", "device:dev-1", "day:2026-11-21"]
    no_device = rewards_for("referral.bound", bound(device=None), "e", CFG)[0]
    assert [key for key, _ in budgets_for(no_device, budgets)] == ["user:bob", "day:2026-11-21"]


def test_a_budget_needs_a_limit_and_fits_by_count_and_amount():
    with pytest.raises(ValueError):
        Budget(scope="day")
    budget = Budget(scope="day", max_count=2, max_amount=2500)
    use = BudgetUse()
    assert fits(use, budget, 2000)
    use = after_claim(use, 2000)
    assert not fits(use, budget, 1000)  # amount
    assert fits(use, budget, 500)
    use = after_claim(use, 500)
    assert not fits(use, budget, 0)  # count
