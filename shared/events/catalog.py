"""Every topic, its record key and the event types on it: the one place that says so."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.events import schemas as s

USERS = "users.events"
ORDERS = "orders.events"
REFERRAL = "referral.events"
GROUPBUY = "groupbuy.events"
REWARDS = "rewards.events"

DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class EventSpec:
    type: str
    topic: str
    data_model: builtins.type[BaseModel]
    key_field: str
    description: str

    def key_of(self, data: BaseModel | dict[str, Any]) -> str:
        value = data.get(self.key_field) if isinstance(data, dict) else getattr(data, self.key_field)
        return str(value)


def _spec(type_: str, topic: str, model: type[BaseModel], key: str, description: str) -> EventSpec:
    return EventSpec(type_, topic, model, key, description)


EVENTS: dict[str, EventSpec] = {
    spec.type: spec
    for spec in (
        _spec("user.registered", USERS, s.UserRegistered, "user_id", "a user signed up"),
        _spec("order.completed", ORDERS, s.OrderCompleted, "user_id", "an order was paid and completed"),
        _spec("order.refunded", ORDERS, s.OrderRefunded, "user_id", "an order was refunded, fully or partly"),
        _spec("referral.bound", REFERRAL, s.ReferralBound, "inviter_id", "an invitee was bound to an inviter"),
        _spec("referral.qualified", REFERRAL, s.ReferralQualified, "inviter_id",
              "the invitee's first order qualified the referral"),
        _spec("referral.disqualified", REFERRAL, s.ReferralDisqualified, "inviter_id",
              "a full refund within the hold disqualified the referral"),
        _spec("referral.milestone_reached", REFERRAL, s.ReferralMilestoneReached, "inviter_id",
              "the inviter reached a milestone (high-fission user, fission expert)"),
        _spec("referral.flagged", REFERRAL, s.ReferralFlagged, "inviter_id",
              "a binding was flagged for review instead of rewarded"),
        _spec("groupbuy.group_opened", GROUPBUY, s.GroupOpened, "group_id", "a group was opened"),
        _spec("groupbuy.member_joined", GROUPBUY, s.MemberJoined, "group_id", "a user took a seat"),
        _spec("groupbuy.member_paid", GROUPBUY, s.MemberPaid, "group_id", "a seat was paid"),
        _spec("groupbuy.group_formed", GROUPBUY, s.GroupFormed, "group_id",
              "the group formed: members, tier reached, each member's price"),
        _spec("groupbuy.group_failed", GROUPBUY, s.GroupFailed, "group_id",
              "the group failed; every paid order is listed for refund"),
        _spec("groupbuy.seat_released", GROUPBUY, s.SeatReleased, "group_id",
              "an unpaid seat was released at the end of its payment window"),
        _spec("groupbuy.payment_rejected", GROUPBUY, s.PaymentRejected, "group_id",
              "an order paid for a seat it no longer holds; refund it"),
        _spec("rewards.coupon_issued", REWARDS, s.CouponIssued, "user_id", "a coupon was issued"),
        _spec("rewards.coupon_redeemed", REWARDS, s.CouponRedeemed, "user_id", "a coupon was redeemed"),
        _spec("rewards.coupon_revoked", REWARDS, s.CouponRevoked, "user_id", "a coupon was revoked"),
        _spec("rewards.commission_credited", REWARDS, s.CommissionCredited, "user_id",
              "a commission was credited on hold"),
        _spec("rewards.commission_reversed", REWARDS, s.CommissionReversed, "user_id",
              "a commission was reversed"),
        _spec("rewards.withdrawal_requested", REWARDS, s.WithdrawalRequested, "user_id",
              "a withdrawal was requested"),
    )
}

TOPICS: dict[str, list[EventSpec]] = {}
for _spec_item in EVENTS.values():
    TOPICS.setdefault(_spec_item.topic, []).append(_spec_item)

EVENT_TYPE_OF_MODEL: dict[type[BaseModel], str] = {spec.data_model: spec.type for spec in EVENTS.values()}

Handler = Callable[..., Any]
