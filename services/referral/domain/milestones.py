"""The inviter's qualified count as a ledger of +1/-1 steps, and the milestones it reaches.

Each step is one inserted ledger entry ``inviter:seq``; ``next_state`` computes the entry from its
predecessor, so the count and the milestones announced are decided by the insert that wins the
sequence number, never by a read-modify-write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

HIGH_FISSION_USER = "high_fission_user"
FISSION_EXPERT = "fission_expert"


@dataclass(frozen=True)
class LedgerState:
    seq: int = 0
    qualified_count: int = 0
    milestones: frozenset[str] = field(default_factory=frozenset)  # every milestone ever announced


@dataclass(frozen=True)
class LedgerStep:
    state: LedgerState
    newly_reached: tuple[str, ...]  # to announce with this step, in threshold order


def next_state(previous: LedgerState, delta: int, thresholds: Mapping[str, int]) -> LedgerStep:
    """Apply +1 (qualified) or -1 (disqualified). A milestone is announced the first time the count
    reaches its threshold and never again, even when the count drops below and comes back."""
    if delta not in (1, -1):
        raise ValueError("a ledger step is +1 or -1")
    count = max(0, previous.qualified_count + delta)
    reached = tuple(
        name for name, at in sorted(thresholds.items(), key=lambda item: (item[1], item[0]))
        if count >= at and name not in previous.milestones
    )
    state = LedgerState(previous.seq + 1, count, previous.milestones | frozenset(reached))
    return LedgerStep(state, reached)


@dataclass(frozen=True)
class Progress:
    milestone: str
    at: int
    remaining: int


def next_milestone(count: int, thresholds: Mapping[str, int]) -> Progress | None:
    """The next threshold above the current count, or None when every one is reached."""
    upcoming = sorted((at, name) for name, at in thresholds.items() if at > count)
    if not upcoming:
        return None
    at, name = upcoming[0]
    return Progress(name, at, at - count)
