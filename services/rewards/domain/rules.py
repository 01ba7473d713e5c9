"""Reward rules as data: which event grants what to whom.

A rule is a small pure function from one typed event to the rewards it grants. A new campaign
rule is a function here, a line in ``RULES`` and a test. Every reward has a deterministic id
``rule:source_event_id:beneficiary``; storing it by insert is what makes it happen once.
"""

from __future__ import annotations

import hashlib
from base64 import b32encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.events import schemas as s

CouponKind = Literal["amount_off", "free_shipping"]


@dataclass(frozen=True)
class CouponGrant:
    kind: CouponKind
    value: int
    threshold: int
    valid_for: timedelta


@dataclass(frozen=True)
class CommissionGrant:
    amount: int
    hold: timedelta


Grant = CouponGrant | CommissionGrant


@dataclass(frozen=True)
class Reward:
    """One thing granted to one beneficiary because of one event, by one rule."""

    rule: str
    source_event_id: str
    beneficiary: str
    grant: Grant
    occurred_at: datetime
    campaign: str
    device_id: str | None = None
    referral: str | None = None  # "inviter:invitee" when a referral caused it (to revoke it later)
    edition: int = 1  # bumped when a rule is fixed, so that a replay grants the fixed reward anew

    @property
    def reward_id(self) -> str:
        rule = self.rule if self.edition == 1 else f"{self.rule}.v{self.edition}"
        return reward_id(rule, self.source_event_id, self.beneficiary)

    @property
    def value(self) -> int:
        return self.grant.value if isinstance(self.grant, CouponGrant) else self.grant.amount

    @property
    def coupon_code(self) -> str:
        return coupon_code(self.reward_id)


def reward_id(rule: str, source_event_id: str, beneficiary: str) -> str:
    return f"{rule}:{source_event_id}:{beneficiary}"


def coupon_code(of_reward_id: str) -> str:
    """A short code derived from the reward id: the same reward always has the same code."""
    digest = hashlib.sha256(of_reward_id.encode()).digest()
    return "PW" + b32encode(digest).decode()[:14]


def referral_key(inviter_id: str, invitee_id: str) -> str:
    return f"{inviter_id}:{invitee_id}"


@dataclass(frozen=True)
class RuleConfig:
    """Business defaults of the contract; the settings build it from the environment."""

    welcome_coupon: CouponGrant = CouponGrant("amount_off", 2000, 5000, timedelta(days=7))
    welcome_free_shipping: CouponGrant = CouponGrant("free_shipping", 0, 0, timedelta(days=7))
    inviter_coupon: CouponGrant = CouponGrant("amount_off", 2000, 0, timedelta(days=30))
    expert_threshold: int = 5
    expert_commission: CommissionGrant = CommissionGrant(500, timedelta(days=7))
    initiator_coupon: CouponGrant = CouponGrant("amount_off", 500, 0, timedelta(days=30))
    disabled_rules: frozenset[str] = field(default_factory=frozenset)
    # rule -> edition: a fixed rule gets a new edition, so its rewards get new ids (see the
    # "wrong coupons" runbook: revoke what the bad edition issued, replay the window)
    editions: Mapping[str, int] = field(default_factory=dict)


RuleFn = Callable[[Any, str, RuleConfig], list[Reward]]


def welcome_pack(data: s.ReferralBound, event_id: str, cfg: RuleConfig) -> list[Reward]:
    common: dict[str, Any] = {
        "source_event_id": event_id, "beneficiary": data.invitee_id, "occurred_at": data.bound_at,
        "campaign": "referral", "device_id": data.device_id,
        "referral": referral_key(data.inviter_id, data.invitee_id),
    }
    return [Reward(rule="welcome_coupon", grant=cfg.welcome_coupon, **common),
            Reward(rule="welcome_free_shipping", grant=cfg.welcome_free_shipping, **common)]


def inviter_coupon(data: s.ReferralQualified, event_id: str, cfg: RuleConfig) -> list[Reward]:
    return [Reward(rule="inviter_coupon", source_event_id=event_id, beneficiary=data.inviter_id,
                   grant=cfg.inviter_coupon, occurred_at=data.qualified_at, campaign="referral",
                   referral=referral_key(data.inviter_id, data.invitee_id))]


def expert_commission(data: s.ReferralQualified, event_id: str, cfg: RuleConfig) -> list[Reward]:
    """Every qualified invite after the inviter became a fission expert earns a commission."""
    if data.qualified_count <= cfg.expert_threshold:
        return []
    return [Reward(rule="expert_commission", source_event_id=event_id, beneficiary=data.inviter_id,
                   grant=cfg.expert_commission, occurred_at=data.qualified_at, campaign="referral",
                   referral=referral_key(data.inviter_id, data.invitee_id))]


def initiator_coupon(data: s.GroupFormed, event_id: str, cfg: RuleConfig) -> list[Reward]:
    return [Reward(rule="initiator_coupon", source_event_id=event_id, beneficiary=data.initiator_id,
                   grant=cfg.initiator_coupon, occurred_at=data.formed_at,
                   campaign=f"groupbuy:{data.campaign_id}")]


# event type -> the rules it triggers
RULES: dict[str, tuple[tuple[str, RuleFn], ...]] = {
    "referral.bound": (("welcome_pack", welcome_pack),),
    "referral.qualified": (("inviter_coupon", inviter_coupon), ("expert_commission", expert_commission)),
    "groupbuy.group_formed": (("initiator_coupon", initiator_coupon),),
}

# the rules a referral.disqualified takes back
REVOCABLE_ON_DISQUALIFICATION = frozenset({"inviter_coupon", "expert_commission"})


def rewards_for(event_type: str, data: Any, event_id: str, cfg: RuleConfig) -> list[Reward]:
    """Every reward an event grants under the configured rules (pure)."""
    rewards: list[Reward] = []
    for name, rule in RULES.get(event_type, ()):
        if name in cfg.disabled_rules:
            continue
        rewards.extend(replace(r, edition=cfg.editions.get(r.rule, 1))
                       for r in rule(data, event_id, cfg) if r.rule not in cfg.disabled_rules)
    return rewards
