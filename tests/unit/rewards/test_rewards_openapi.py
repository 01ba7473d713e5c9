"""The rewards OpenAPI document: the contract's paths, scopes' error codes and examples."""

from __future__ import annotations

from services.rewards.bootstrap import build_app
from services.rewards.settings import RewardsSettings


def test_rewards_openapi_has_the_contract_paths_with_examples():
    app = build_app(RewardsSettings(environment="test"))
    spec = app.openapi()
    paths = spec["paths"]
    assert {"get"} <= set(paths["/v1/me/coupons"])
    assert {"post"} <= set(paths["/v1/coupons/{code}/redemptions"])
    assert {"delete"} <= set(paths["/v1/coupons/{code}/redemptions/{order_id}"])
    assert {"get"} <= set(paths["/v1/me/commissions"])
    assert {"post"} <= set(paths["/v1/me/withdrawals"])
    assert {"get"} <= set(paths["/v1/rewards/refusals"])
    schemas = spec["components"]["schemas"]
    for name in ("CouponView", "RedemptionRequest", "Commissions", "WithdrawalRequest", "Withdrawal"):
        assert schemas[name].get("examples"), name
    redemption = paths["/v1/coupons/{code}/redemptions"]["post"]
    assert {"201", "200", "409", "422"} <= set(redemption["responses"])
    assert "coupon_reserved" in redemption["description"]


def test_rewards_settings_read_budgets_and_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("REWARDS_BUDGETS", '[{"scope": "day", "max_amount": 1000}]')
    monkeypatch.setenv("REWARDS_EXPERT_THRESHOLD", "7")
    settings = RewardsSettings()
    assert settings.budgets[0].scope == "day" and settings.budgets[0].max_amount == 1000
    cfg = settings.rule_config()
    assert cfg.expert_threshold == 7
    assert (cfg.welcome_coupon.value, cfg.welcome_coupon.threshold) == (2000, 5000)
    assert cfg.expert_commission.amount == 500 and settings.min_withdrawal == 1000
    assert settings.reservation_ttl.total_seconds() == 30 * 60
