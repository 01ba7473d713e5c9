"""Campaign rules: tiers, prices, validity and the active window. Pure: no I/O, time passed in."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class TierRule:
    """``size`` paid members earn ``percent_off`` (0-100) or ``amount_off`` (minor units) off the list price."""

    size: int
    percent_off: int | None = None
    amount_off: int | None = None

    def price(self, list_price: int) -> int:
        """The member price at this tier. A percentage discount is rounded down to the fen (the shopper
        never pays less than the exact percentage would give); the price never goes below 0."""
        discount = list_price * self.percent_off // 100 if self.percent_off is not None else self.amount_off or 0
        return max(0, list_price - discount)


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class CampaignRules:
    campaign_id: str
    sku: str
    list_price: int
    tiers: tuple[TierRule, ...]
    starts_at: datetime
    ends_at: datetime
    stock: int
    group_window: timedelta
    seat_payment_window: timedelta
    per_user_limit: int | None = None
    new_users_only: bool = False
    auto_complete_min: int | None = None

    @property
    def smallest_tier(self) -> TierRule:
        return self.tiers[0]

    @property
    def largest_tier(self) -> TierRule:
        return self.tiers[-1]

    @property
    def max_seats(self) -> int:
        """A group never has more seats than its largest tier: it forms at once when those are paid."""
        return self.largest_tier.size

    def is_active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def group_deadline(self, opened_at: datetime) -> datetime:
        """A group closes after the group window, but never after the campaign ends."""
        return min(opened_at + self.group_window, self.ends_at)

    def tier_reached(self, paid: int) -> TierRule | None:
        """The best tier ``paid`` members reach (largest size not above ``paid``), if any."""
        reached = [t for t in self.tiers if t.size <= paid]
        return reached[-1] if reached else None

    def closing_tier(self, paid: int) -> TierRule | None:
        """The tier a group closes at with ``paid`` members at its deadline: the best reached; or, when
        ``auto_complete_min`` is reached, the smallest tier; or None: the group fails."""
        reached = self.tier_reached(paid)
        if reached is not None:
            return reached
        if self.auto_complete_min is not None and paid >= self.auto_complete_min:
            return self.smallest_tier
        return None

    def price_at(self, tier: TierRule) -> int:
        return tier.price(self.list_price)


def validate_campaign(
    *,
    list_price: int,
    tiers: Sequence[TierRule],
    starts_at: datetime,
    ends_at: datetime,
    stock: int,
    group_window: timedelta,
    seat_payment_window: timedelta,
    per_user_limit: int | None,
    auto_complete_min: int | None,
) -> list[Problem]:
    """Every reason the campaign is invalid (empty when it is valid)."""
    problems: list[Problem] = []
    if list_price < 1:
        problems.append(Problem("invalid_price", "list_price must be at least 1 minor unit"))
    if not tiers:
        problems.append(Problem("invalid_tiers", "at least one tier is needed"))
    for index, tier in enumerate(tiers):
        if (tier.percent_off is None) == (tier.amount_off is None):
            problems.append(Problem("invalid_tiers", f"tier {index + 1}: give exactly one of percent_off, amount_off"))
        elif tier.size < 2:
            problems.append(Problem("invalid_tiers", f"tier {index + 1}: a group has at least 2 people"))
        elif tier.percent_off is not None and not 0 < tier.percent_off <= 100:
            problems.append(Problem("invalid_tiers", f"tier {index + 1}: percent_off must be 1 to 100"))
        elif tier.amount_off is not None and tier.amount_off < 1:
            problems.append(Problem("invalid_tiers", f"tier {index + 1}: amount_off must be at least 1"))
        elif tier.amount_off is not None and tier.amount_off > list_price:
            problems.append(Problem("price_below_zero",
                                    f"tier {index + 1}: amount_off {tier.amount_off} is more than the list price"))
    for index, (lower, upper) in enumerate(itertools.pairwise(tiers)):
        if upper.size <= lower.size:
            problems.append(Problem("tiers_not_increasing",
                                    f"tier {index + 2}: sizes must strictly increase ({lower.size} then {upper.size})"))
        elif list_price >= 1 and upper.price(list_price) >= lower.price(list_price):
            problems.append(Problem("discounts_not_increasing",
                                    f"tier {index + 2}: a larger group must pay strictly less "
                                    f"({lower.price(list_price)} then {upper.price(list_price)})"))
    if ends_at <= starts_at:
        problems.append(Problem("invalid_window", "ends_at must be after starts_at"))
    if stock < 1:
        problems.append(Problem("invalid_stock", "stock must be at least 1 unit"))
    if group_window <= timedelta(0):
        problems.append(Problem("invalid_window", "group_window_minutes must be positive"))
    if seat_payment_window <= timedelta(0):
        problems.append(Problem("invalid_window", "seat_payment_minutes must be positive"))
    elif seat_payment_window > group_window:
        problems.append(Problem("invalid_window", "seat_payment_minutes cannot be longer than the group window"))
    if per_user_limit is not None and per_user_limit < 1:
        problems.append(Problem("invalid_per_user_limit", "per_user_limit must be at least 1"))
    if auto_complete_min is not None and tiers:
        smallest = min(t.size for t in tiers)
        if not 1 <= auto_complete_min < smallest:
            problems.append(Problem("invalid_auto_complete_min",
                                    f"auto_complete_min must be 1 to {smallest - 1} (below the smallest tier)"))
    return problems
