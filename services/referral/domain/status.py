"""What an inviter sees: each invitee's status, masked ids, leaderboard periods."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal


class ReferralStatus(StrEnum):
    BOUND = "bound"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"
    UNDER_REVIEW = "under_review"
    REJECTED = "rejected"


Decision = Literal["approve", "reject"]
Period = Literal["day", "week", "month"]


def is_active(flagged: bool, decision: Decision | None) -> bool:
    """A binding counts (may qualify) unless it is flagged and not approved."""
    return not flagged or decision == "approve"


def referral_status(*, flagged: bool, decision: Decision | None, qualified: bool,
                    disqualified: bool) -> ReferralStatus:
    if flagged and decision is None:
        return ReferralStatus.UNDER_REVIEW
    if flagged and decision == "reject":
        return ReferralStatus.REJECTED
    if disqualified:
        return ReferralStatus.DISQUALIFIED
    if qualified:
        return ReferralStatus.QUALIFIED
    return ReferralStatus.BOUND


def mask_id(user_id: str) -> str:
    """Enough to recognise a friend, not enough to identify a stranger: ``alice`` -> ``a***e``."""
    if len(user_id) <= 2:
        return user_id[:1] + "***"
    return f"{user_id[0]}***{user_id[-1]}"


def period_start(period: Period, now: datetime) -> datetime:
    """Calendar periods in UTC: today, this ISO week (from Monday), this month."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight
    if period == "week":
        return midnight - timedelta(days=midnight.weekday())
    return midnight.replace(day=1)


def utc_day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")
