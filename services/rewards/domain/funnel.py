"""The campaign funnel operators watch on ``/live`` (pure): counts of events seen, coupons and
commission amounts, turned into the stages of the two funnels.

The inputs are raw tallies read from the store: how many referral/group-buy events of each type
were recorded (each event id once), how many coupons were issued, how many coupon transitions of
each action happened, and the commission ledger's sums and counts by entry kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# The referral and group-buy event types the funnel records (each event id once).
FUNNEL_EVENT_TYPES = (
    "referral.bound", "referral.qualified", "referral.disqualified", "referral.flagged",
    "referral.milestone_reached",
    "groupbuy.group_opened", "groupbuy.member_joined", "groupbuy.member_paid", "groupbuy.group_formed",
    "groupbuy.group_failed", "groupbuy.seat_released",
)


@dataclass(frozen=True)
class Tallies:
    events: Mapping[str, int] = field(default_factory=dict)
    coupons_issued: int = 0
    coupon_actions: Mapping[str, int] = field(default_factory=dict)  # transition action -> count
    ledger_amounts: Mapping[str, int] = field(default_factory=dict)  # entry kind -> signed sum
    ledger_counts: Mapping[str, int] = field(default_factory=dict)  # entry kind -> entries


@dataclass(frozen=True)
class ReferralFunnel:
    bound: int
    qualified: int
    disqualified: int
    net_qualified: int
    flagged: int
    milestones: int


@dataclass(frozen=True)
class GroupFunnel:
    opened: int
    members_joined: int
    members_paid: int
    formed: int
    failed: int
    open_now: int
    seats_released: int


@dataclass(frozen=True)
class CouponCounts:
    issued: int
    redeemed: int
    revoked: int


@dataclass(frozen=True)
class CommissionTotals:
    """Amounts in minor units (fen), all positive: what was credited, reversed, withdrawn."""

    credited: int
    reversed: int
    withdrawn: int
    credited_count: int
    reversed_count: int
    withdrawn_count: int
    currency: str = "CNY"


@dataclass(frozen=True)
class Funnel:
    as_of: datetime
    referral: ReferralFunnel
    groupbuy: GroupFunnel
    coupons: CouponCounts
    commissions: CommissionTotals


def summarize(tallies: Tallies, as_of: datetime) -> Funnel:
    events = tallies.events

    def seen(event_type: str) -> int:
        return int(events.get(event_type, 0))

    qualified, disqualified = seen("referral.qualified"), seen("referral.disqualified")
    opened, formed, failed = seen("groupbuy.group_opened"), seen("groupbuy.group_formed"), seen("groupbuy.group_failed")
    amounts, counts = tallies.ledger_amounts, tallies.ledger_counts
    return Funnel(
        as_of=as_of,
        referral=ReferralFunnel(
            bound=seen("referral.bound"), qualified=qualified, disqualified=disqualified,
            net_qualified=qualified - disqualified, flagged=seen("referral.flagged"),
            milestones=seen("referral.milestone_reached"),
        ),
        groupbuy=GroupFunnel(
            opened=opened, members_joined=seen("groupbuy.member_joined"), members_paid=seen("groupbuy.member_paid"),
            formed=formed, failed=failed,
            # events of one group arrive in order (keyed by group id); across a replay window the
            # outcome may be seen before the opening, so never below zero
            open_now=max(0, opened - formed - failed), seats_released=seen("groupbuy.seat_released"),
        ),
        coupons=CouponCounts(
            issued=tallies.coupons_issued, redeemed=int(tallies.coupon_actions.get("confirm", 0)),
            revoked=int(tallies.coupon_actions.get("revoke", 0)),
        ),
        commissions=CommissionTotals(
            # reversals and withdrawals are stored as negative entries
            credited=int(amounts.get("credit", 0)), reversed=-int(amounts.get("reversal", 0)),
            withdrawn=-int(amounts.get("withdrawal", 0)),
            credited_count=int(counts.get("credit", 0)), reversed_count=int(counts.get("reversal", 0)),
            withdrawn_count=int(counts.get("withdrawal", 0)),
        ),
    )
