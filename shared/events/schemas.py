"""Typed ``data`` of every event type in the contract, inbound and outbound.

Required fields of the contract come first; what we add is optional or documented here, never a
change of meaning. Amounts are integer minor units, times aware UTC.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints

from shared.events.envelope import NO_NUL, Currency, EventData, Id, Money, SignedMoney, UtcDatetime

ShortText = Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)]
ReferralCode = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_NUL)]
CouponCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]

# ---------------------------------------------------------------- inbound: users.events, orders.events


class UserRegistered(EventData):
    user_id: Id
    registered_at: UtcDatetime
    referral_code: ReferralCode | None = None
    device_id: ShortText | None = None
    ip: IPvAnyAddress | None = None
    phone_hash: ShortText | None = None


class OrderItem(EventData):
    sku: Id
    quantity: Annotated[int, Field(ge=1, le=100_000)]
    unit_price: Money


class OrderCompleted(EventData):
    order_id: Id
    user_id: Id
    amount: Money
    currency: Currency
    completed_at: UtcDatetime
    items: Annotated[list[OrderItem], Field(max_length=500)] = Field(default_factory=list)
    group_id: Id | None = None
    coupon_codes: Annotated[list[CouponCode], Field(max_length=50)] = Field(default_factory=list)


class OrderRefunded(EventData):
    order_id: Id
    user_id: Id
    refunded_amount: Money
    full: bool
    refunded_at: UtcDatetime


# ---------------------------------------------------------------- outbound: referral.events

BindingChannel = Literal["registration", "app"]
Milestone = Literal["high_fission_user", "fission_expert"]


class ReferralBound(EventData):
    inviter_id: Id
    invitee_id: Id
    code: ReferralCode
    bound_at: UtcDatetime
    channel: BindingChannel
    device_id: ShortText | None = None
    source_event_id: Id | None = Field(None, description="the user.registered that bound it, if any")


class ReferralQualified(EventData):
    inviter_id: Id
    invitee_id: Id
    order_id: Id
    qualified_count: Annotated[int, Field(ge=0, description="the inviter's qualified invites after this one")]
    qualified_at: UtcDatetime
    source_event_id: Id


class ReferralDisqualified(EventData):
    inviter_id: Id
    invitee_id: Id
    order_id: Id
    reason: ShortText
    qualified_count: Annotated[int, Field(ge=0, description="the inviter's qualified invites after this one")]
    disqualified_at: UtcDatetime
    source_event_id: Id


class ReferralMilestoneReached(EventData):
    inviter_id: Id
    milestone: Milestone
    qualified_count: Annotated[int, Field(ge=0)]
    reached_at: UtcDatetime
    source_event_id: Id


class ReferralFlagged(EventData):
    inviter_id: Id
    invitee_id: Id
    reasons: Annotated[list[ShortText], Field(min_length=1)]
    flagged_at: UtcDatetime
    source_event_id: Id | None = None


# ---------------------------------------------------------------- outbound: groupbuy.events


class Tier(EventData):
    size: Annotated[int, Field(ge=2, le=1000)]
    percent_off: Annotated[int, Field(ge=0, le=100)] | None = None
    amount_off: Money | None = None


class GroupOpened(EventData):
    group_id: Id
    campaign_id: Id
    initiator_id: Id
    deadline: UtcDatetime
    opened_at: UtcDatetime


class MemberJoined(EventData):
    group_id: Id
    campaign_id: Id
    user_id: Id
    seat: Annotated[int, Field(ge=1)]
    seat_payment_deadline: UtcDatetime
    joined_at: UtcDatetime


class MemberPaid(EventData):
    group_id: Id
    campaign_id: Id
    user_id: Id
    seat: Annotated[int, Field(ge=1)]
    order_id: Id
    paid_at: UtcDatetime
    source_event_id: Id


class FormedMember(EventData):
    user_id: Id
    seat: Annotated[int, Field(ge=1)]
    order_id: Id
    price: Money


class GroupFormed(EventData):
    group_id: Id
    campaign_id: Id
    initiator_id: Id
    tier: Tier
    list_price: Money
    currency: Currency = "CNY"
    members: list[FormedMember]
    formed_at: UtcDatetime


class PaidMember(EventData):
    user_id: Id
    order_id: Id
    amount: Money | None = None


class GroupFailed(EventData):
    group_id: Id
    campaign_id: Id
    initiator_id: Id
    reason: ShortText
    refund_order_ids: list[Id] = Field(description="every paid member's order, to refund")
    paid_members: list[PaidMember] = Field(default_factory=list)
    failed_at: UtcDatetime


class SeatReleased(EventData):
    group_id: Id
    campaign_id: Id
    user_id: Id
    seat: Annotated[int, Field(ge=1)]
    reason: ShortText
    released_at: UtcDatetime


class PaymentRejected(EventData):
    order_id: Id
    user_id: Id
    group_id: Id
    reason: ShortText
    amount: Money | None = None
    rejected_at: UtcDatetime
    source_event_id: Id


# ---------------------------------------------------------------- outbound: rewards.events

CouponKind = Literal["amount_off", "free_shipping"]


class CouponIssued(EventData):
    user_id: Id
    coupon_code: CouponCode
    kind: CouponKind
    value: Money
    threshold: Money
    currency: Currency = "CNY"
    expires_at: UtcDatetime
    rule: ShortText
    source_event_id: Id
    issued_at: UtcDatetime


class CouponRedeemed(EventData):
    user_id: Id
    coupon_code: CouponCode
    order_id: Id
    redeemed_at: UtcDatetime
    source_event_id: Id


class CouponRevoked(EventData):
    user_id: Id
    coupon_code: CouponCode
    reason: ShortText
    revoked_at: UtcDatetime
    source_event_id: Id


class CommissionCredited(EventData):
    user_id: Id
    entry_id: Id
    amount: Money
    currency: Currency = "CNY"
    available_at: UtcDatetime
    rule: ShortText
    credited_at: UtcDatetime
    source_event_id: Id


class CommissionReversed(EventData):
    user_id: Id
    entry_id: Id
    reversed_entry_id: Id
    amount: SignedMoney
    reason: ShortText
    reversed_at: UtcDatetime
    source_event_id: Id


class WithdrawalRequested(EventData):
    user_id: Id
    withdrawal_id: Id
    amount: Money
    currency: Currency = "CNY"
    requested_at: UtcDatetime
