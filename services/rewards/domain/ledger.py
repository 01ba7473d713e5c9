"""The commission ledger (pure): credits on hold, reversals, withdrawals.

Each user's ledger is a sequence of entries ``user:seq``. An entry carries the state after it
(balance, withdrawn, the credits still on hold), so the next decision needs only the last entry:
read it, decide here, insert ``seq + 1``; a concurrent writer that took ``seq + 1`` first makes
the insert fail and the decision is made again on the new state. Nothing can overdraw.

Balances: ``balance`` is the sum of every entry; ``pending`` the credits whose hold has not ended
(derived from the time at read); ``available = balance - pending`` (negative after a reversal of
money already withdrawn); ``withdrawn`` the sum of withdrawals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

EntryKind = Literal["credit", "reversal", "withdrawal"]


@dataclass(frozen=True)
class Hold:
    ref: str
    amount: int
    available_at: datetime


@dataclass(frozen=True)
class LedgerState:
    seq: int = 0
    balance: int = 0
    withdrawn: int = 0
    holds: tuple[Hold, ...] = ()

    def pending(self, now: datetime) -> int:
        return sum(h.amount for h in self.holds if h.available_at > now)

    def available(self, now: datetime) -> int:
        return self.balance - self.pending(now)


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: EntryKind
    amount: int  # signed: credits positive, reversals and withdrawals negative
    ref: str  # unique per effect: the reward id, "reversal:<reward id>", "withdrawal:<id>"
    at: datetime
    available_at: datetime | None
    reverses: str | None
    after: LedgerState


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


def apply(state: LedgerState, kind: EntryKind, amount: int, ref: str, at: datetime,
          available_at: datetime | None = None, reverses: str | None = None) -> Entry:
    """The entry that moves ``state`` by ``amount``; holds that ended by ``at`` are dropped."""
    holds = tuple(h for h in state.holds if h.available_at > at and h.ref != reverses)
    if kind == "credit" and available_at is not None and available_at > at:
        holds = (*holds, Hold(ref, amount, available_at))
    after = LedgerState(
        seq=state.seq + 1,
        balance=state.balance + amount,
        withdrawn=state.withdrawn + (-amount if kind == "withdrawal" else 0),
        holds=holds,
    )
    return Entry(after.seq, kind, amount, ref, at, available_at, reverses, after)


def credit(state: LedgerState, *, ref: str, amount: int, available_at: datetime, at: datetime) -> Entry:
    if amount <= 0:
        raise ValueError("a credit is positive")
    return apply(state, "credit", amount, ref, at, available_at=available_at)


def reverse(state: LedgerState, *, credit_ref: str, amount: int, at: datetime) -> Entry:
    """Take back a credit: from pending if still on hold, else from the balance (which may go
    negative when the money was already withdrawn)."""
    return apply(state, "reversal", -amount, f"reversal:{credit_ref}", at, reverses=credit_ref)


def withdraw(state: LedgerState, *, withdrawal_id: str, amount: int, minimum: int, at: datetime) -> Entry | Refusal:
    available = state.available(at)
    if available < 0:
        return Refusal(409, "balance_negative",
                       "a reversal left the balance negative; no withdrawal until it is made up")
    if amount < minimum:
        return Refusal(422, "below_minimum_withdrawal", f"the minimum withdrawal is {minimum}")
    if amount > available:
        return Refusal(409, "insufficient_balance", f"only {max(available, 0)} is available to withdraw")
    return apply(state, "withdrawal", -amount, f"withdrawal:{withdrawal_id}", at)


def rebuild(entries: Iterable[Entry]) -> LedgerState:
    """The state from the entries alone (checks the state each entry carries)."""
    state = LedgerState()
    for e in sorted(entries, key=lambda x: x.seq):
        state = apply(state, e.kind, e.amount, e.ref, e.at, e.available_at, e.reverses).after
    return state
