"""Rewards settings: env vars with the ``REWARDS_`` prefix; business defaults from the contract."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.rewards.domain.budgets import Budget
from services.rewards.domain.rules import CommissionGrant, CouponGrant, RuleConfig
from shared.settings import ServiceSettings

Amount = int


class RewardsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "rewards"
    default_port: ClassVar[int] = 8003

    # invitee welcome pack on referral.bound: a 5000-2000 coupon and a free-shipping coupon
    welcome_coupon_value: Amount = Field(2000, ge=0)
    welcome_coupon_threshold: Amount = Field(5000, ge=0)
    welcome_free_shipping_value: Amount = Field(0, ge=0, description="0: the whole shipping fee")
    welcome_valid_days: float = Field(7, gt=0)
    # inviter coupon per qualified invite
    inviter_coupon_value: Amount = Field(2000, ge=0)
    inviter_coupon_threshold: Amount = Field(0, ge=0)
    inviter_coupon_valid_days: float = Field(30, gt=0)
    # commission per qualified invite once the inviter is a fission expert
    expert_threshold: int = Field(5, ge=0, description="commission when qualified_count is above this")
    expert_commission: Amount = Field(500, ge=0)
    commission_hold_days: float = Field(7, ge=0)
    # group initiator coupon on groupbuy.group_formed
    initiator_coupon_value: Amount = Field(500, ge=0)
    initiator_coupon_threshold: Amount = Field(0, ge=0)
    initiator_coupon_valid_days: float = Field(30, gt=0)
    disabled_rules: list[str] = Field(default_factory=list, description="rule names switched off")
    rule_editions: dict[str, int] = Field(
        default_factory=dict, description='JSON, e.g. {"inviter_coupon": 2}: a fixed rule\'s rewards get new ids')

    budgets: list[Budget] = Field(default_factory=list,
                                  description='JSON list, e.g. [{"scope": "day", "max_amount": 1000000}]')

    reservation_minutes: float = Field(30, gt=0, description="unconfirmed reservations are released after")
    reservation_sweep_seconds: float = Field(30, gt=0)
    publish_marks_retention: timedelta = Field(timedelta(days=7), gt=timedelta(0),
                                               description="how long the publish marks of issued coupons are kept")
    min_withdrawal: Amount = Field(1000, ge=1)
    outbox_batching: bool = Field(True, description="publish outbox events in ordered batches off the "
                                                    "handler's path (false: inline, one document at a time)")

    def rule_config(self) -> RuleConfig:
        return RuleConfig(
            welcome_coupon=CouponGrant("amount_off", self.welcome_coupon_value, self.welcome_coupon_threshold,
                                       timedelta(days=self.welcome_valid_days)),
            welcome_free_shipping=CouponGrant("free_shipping", self.welcome_free_shipping_value, 0,
                                              timedelta(days=self.welcome_valid_days)),
            inviter_coupon=CouponGrant("amount_off", self.inviter_coupon_value, self.inviter_coupon_threshold,
                                       timedelta(days=self.inviter_coupon_valid_days)),
            expert_threshold=self.expert_threshold,
            expert_commission=CommissionGrant(self.expert_commission, timedelta(days=self.commission_hold_days)),
            initiator_coupon=CouponGrant("amount_off", self.initiator_coupon_value,
                                         self.initiator_coupon_threshold,
                                         timedelta(days=self.initiator_coupon_valid_days)),
            disabled_rules=frozenset(self.disabled_rules),
            editions=dict(self.rule_editions),
        )

    @property
    def reservation_ttl(self) -> timedelta:
        return timedelta(minutes=self.reservation_minutes)
