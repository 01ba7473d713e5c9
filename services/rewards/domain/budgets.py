"""Reward budgets: per campaign, per user, per device, per day; a count and/or an amount limit.

A budget is a running total kept as a sequence of claim entries (``key:seq``), appended by insert
with optimistic concurrency, so concurrent rewards can never take it over its limit. Which budget
keys a reward draws on, and whether a claim fits, are decided here (pure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from services.rewards.domain.rules import Reward

BudgetScope = Literal["campaign", "user", "device", "day"]

# narrow budgets first: a reward refused by its user's budget never touches the shared ones
_SCOPE_ORDER: dict[str, int] = {"user": 0, "device": 1, "campaign": 2, "day": 3}


class Budget(BaseModel):
    """One configured budget. ``REWARDS_BUDGETS`` is a JSON list of these."""

    scope: BudgetScope
    max_count: int | None = Field(None, ge=0, description="most rewards per scope key")
    max_amount: int | None = Field(None, ge=0, description="most value (minor units) per scope key")
    campaign: str | None = Field(None, description="only rewards of this campaign (e.g. 'referral')")
    rules: list[str] | None = Field(None, description="only rewards of these rules")
    name: str | None = Field(None, description="distinguishes two budgets of one scope")

    @model_validator(mode="after")
    def _has_a_limit(self) -> Budget:
        if self.max_count is None and self.max_amount is None:
            raise ValueError("a budget needs max_count or max_amount")
        return self

    def applies_to(self, reward: Reward) -> bool:
        if self.campaign is not None and reward.campaign != self.campaign:
            return False
        if self.rules is not None and reward.rule not in self.rules:
            return False
        return not (self.scope == "device" and not reward.device_id)

    def key_for(self, reward: Reward) -> str:
        label = self.name or (f"{self.scope}[{self.campaign}]" if self.campaign else self.scope)
        if self.scope == "user":
            value = reward.beneficiary
        elif self.scope == "device":
            value = reward.device_id or ""
        elif self.scope == "campaign":
            value = reward.campaign
        else:  # the day the rewarded event happened: a replay lands on the same day
            value = reward.occurred_at.date().isoformat()
        return f"{label}:{value}"


@dataclass(frozen=True)
class BudgetUse:
    count: int = 0
    amount: int = 0


def budgets_for(reward: Reward, budgets: list[Budget]) -> list[tuple[str, Budget]]:
    """The (key, budget) pairs a reward draws on, narrowest first."""
    chosen = [(b.key_for(reward), b) for b in budgets if b.applies_to(reward)]
    return sorted(chosen, key=lambda kb: (_SCOPE_ORDER[kb[1].scope], kb[0]))


def fits(use: BudgetUse, budget: Budget, value: int) -> bool:
    if budget.max_count is not None and use.count + 1 > budget.max_count:
        return False
    return budget.max_amount is None or use.amount + value <= budget.max_amount


def after_claim(use: BudgetUse, value: int) -> BudgetUse:
    return BudgetUse(use.count + 1, use.amount + value)


def after_release(use: BudgetUse, value: int) -> BudgetUse:
    return BudgetUse(use.count - 1, use.amount - value)
