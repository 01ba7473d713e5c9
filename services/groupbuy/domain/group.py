"""The group lifecycle as pure decisions (no I/O; time passed in).

Seat keys. A group has ``max_seats`` slots (the size of its largest tier). A seat is the pair
(slot, generation), stored under the unique key ``<group_id>:<slot>:<generation>``. Generation 1 of a
slot may always be tried; generation g+1 only once the outcome of generation g is *released*. A seat
has at most one outcome (``paid`` or ``released``), itself a unique-key insert, so a payment and a
release racing for one seat cannot both win. By induction each slot has at most one seat that is not
released, hence the HELD + PAID seats of a group never exceed ``max_seats`` whatever the concurrency:
two joiners racing for the same (slot, generation) collide on the key; a joiner with a stale view
tries a key that exists already and loses.

Lifecycle of a seat:  held --(payment of its holder within the window)--> paid
                      held --(window over | join refused | group closed)--> released
Lifecycle of a group: open --(paid seats reach the largest tier)--> formed (at once)
                      open --(deadline, paid >= smallest tier)--> formed at the best tier reached
                      open --(deadline, paid >= auto_complete_min)--> formed at the smallest tier
                      open --(deadline, otherwise)--> failed (every paid order refunded)
The group outcome is one unique-key insert (``_id = group_id``): exactly one of formed/failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.groupbuy.domain.campaign import CampaignRules, TierRule

SeatStatus = Literal["held", "paid", "released"]


def seat_key(group_id: str, slot: int, generation: int) -> str:
    return f"{group_id}:{slot}:{generation}"


@dataclass(frozen=True)
class Seat:
    seat_id: str
    group_id: str
    slot: int
    generation: int
    user_id: str
    joined_at: datetime
    payment_deadline: datetime


@dataclass(frozen=True)
class SeatOutcome:
    seat_id: str
    outcome: Literal["paid", "released"]
    order_id: str | None = None
    reason: str | None = None
    amount: int | None = None
    source_event_id: str | None = None


def seat_status(seat: Seat, outcomes: Mapping[str, SeatOutcome]) -> SeatStatus:
    outcome = outcomes.get(seat.seat_id)
    return "held" if outcome is None else outcome.outcome


def slot_candidates(max_seats: int, seats: Iterable[Seat],
                    outcomes: Mapping[str, SeatOutcome]) -> list[tuple[int, int]]:
    """(slot, generation) pairs a joiner may try to insert, lowest slot first: every never-used slot
    at generation 1, and every slot whose latest seat was released at the next generation."""
    latest: dict[int, Seat] = {}
    for seat in seats:
        if seat.slot not in latest or seat.generation > latest[seat.slot].generation:
            latest[seat.slot] = seat
    candidates = []
    for slot in range(1, max_seats + 1):
        current = latest.get(slot)
        if current is None:
            candidates.append((slot, 1))
        elif seat_status(current, outcomes) == "released":
            candidates.append((slot, current.generation + 1))
    return candidates


def live_seats(seats: Iterable[Seat], outcomes: Mapping[str, SeatOutcome]) -> list[Seat]:
    """Seats held or paid (not released), by slot."""
    return sorted((s for s in seats if seat_status(s, outcomes) != "released"), key=lambda s: s.slot)


def paid_seats(seats: Iterable[Seat], outcomes: Mapping[str, SeatOutcome]) -> list[Seat]:
    return sorted((s for s in seats if seat_status(s, outcomes) == "paid"), key=lambda s: s.slot)


def seat_of(user_id: str, seats: Iterable[Seat]) -> Seat | None:
    """The user's latest seat in the group (one user holds at most one seat per group)."""
    mine = [s for s in seats if s.user_id == user_id]
    return max(mine, key=lambda s: (s.joined_at, s.generation)) if mine else None


# ------------------------------------------------------------------ payments


@dataclass(frozen=True)
class PaymentVerdict:
    """What to do with an ``order.completed`` naming a group.

    ``accept``: insert the seat's ``paid`` outcome (it may still lose the race to a release, then judge
    again). ``duplicate``: this order already paid this seat; nothing to do. ``reject``: announce
    ``payment_rejected`` so the order is refunded. ``release_first``: the window is over, release the
    seat (if nobody did) and reject.
    """

    action: Literal["accept", "duplicate", "reject", "release_first"]
    reason: str | None = None


def judge_payment(
    *,
    seat: Seat | None,
    outcome: SeatOutcome | None,
    order_id: str,
    completed_at: datetime,
    group_closed: bool,
) -> PaymentVerdict:
    if outcome is not None and outcome.outcome == "paid" and outcome.order_id == order_id:
        return PaymentVerdict("duplicate")
    if seat is None:
        return PaymentVerdict("reject", "not_a_member")
    if outcome is not None and outcome.outcome == "paid":
        return PaymentVerdict("reject", "seat_already_paid")
    if outcome is not None:
        return PaymentVerdict("reject", "seat_released")
    if group_closed:
        return PaymentVerdict("reject", "group_closed")
    if completed_at > seat.payment_deadline:
        return PaymentVerdict("release_first", "payment_window_expired")
    return PaymentVerdict("accept")


# ------------------------------------------------------------------ group outcome


@dataclass(frozen=True)
class MemberPrice:
    user_id: str
    seat: int
    order_id: str
    price: int


@dataclass(frozen=True)
class GroupDecision:
    outcome: Literal["formed", "failed"]
    tier: TierRule | None
    members: tuple[MemberPrice, ...]
    refund_order_ids: tuple[str, ...]
    reason: str


def decide_group(
    rules: CampaignRules,
    paid: Iterable[Seat],
    outcomes: Mapping[str, SeatOutcome],
    *,
    deadline_reached: bool,
) -> GroupDecision | None:
    """Formed at once when the paid seats reach the largest tier; at the deadline formed at the tier
    reached (or the smallest tier via auto_complete_min) or failed; otherwise no decision yet."""
    paid_list = sorted(paid, key=lambda s: s.slot)
    count = len(paid_list)
    if count >= rules.largest_tier.size:
        tier: TierRule | None = rules.largest_tier
        reason = "largest_tier_filled"
    elif deadline_reached:
        tier = rules.closing_tier(count)
        if tier is not None:
            reason = "deadline_tier_reached" if rules.tier_reached(count) else "auto_complete_min_reached"
        else:
            reason = "not_enough_paid_members"
    else:
        return None
    order_ids = tuple(outcomes[s.seat_id].order_id or "" for s in paid_list)
    if tier is None:
        return GroupDecision("failed", None, (), order_ids, reason)
    price = rules.price_at(tier)
    members = tuple(MemberPrice(s.user_id, s.slot, order_id, price)
                    for s, order_id in zip(paid_list, order_ids, strict=True))
    return GroupDecision("formed", tier, members, (), reason)


def included_order_ids(decision_members: Iterable[str], refunds: Iterable[str]) -> set[str]:
    """Orders a group outcome accounts for (formed members or refunds); any other paid order of the
    group must be rejected so that it is refunded."""
    return set(decision_members) | set(refunds)


# ------------------------------------------------------------------ an in-memory group (the model)


@dataclass
class GroupBook:
    """The whole lifecycle of one group in memory, built only from the decisions above. It is the
    executable specification the store-backed service follows, and what the property tests drive."""

    rules: CampaignRules
    group_id: str
    deadline: datetime
    seats: list[Seat] = field(default_factory=list)
    outcomes: dict[str, SeatOutcome] = field(default_factory=dict)
    decision: GroupDecision | None = None
    rejected_orders: dict[str, str] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        return self.decision is not None

    def join(self, user_id: str, now: datetime) -> Seat | str:
        if self.closed or now >= self.deadline:
            return "group_closed"
        if any(s.user_id == user_id for s in self.seats):
            return "already_member"
        candidates = slot_candidates(self.rules.max_seats, self.seats, self.outcomes)
        if not candidates:
            return "group_full"
        slot, generation = candidates[0]
        seat = Seat(seat_key(self.group_id, slot, generation), self.group_id, slot, generation, user_id, now,
                    min(now + self.rules.seat_payment_window, self.deadline))
        self.seats.append(seat)
        return seat

    def pay(self, user_id: str, order_id: str, now: datetime) -> str:
        seat = seat_of(user_id, self.seats)
        verdict = judge_payment(seat=seat, outcome=self.outcomes.get(seat.seat_id) if seat else None,
                                order_id=order_id, completed_at=now, group_closed=self.closed)
        if verdict.action == "duplicate":
            return "duplicate"
        if verdict.action in ("reject", "release_first"):
            if verdict.action == "release_first" and seat is not None:
                self.outcomes.setdefault(seat.seat_id, SeatOutcome(seat.seat_id, "released", reason="expired"))
            self.rejected_orders.setdefault(order_id, verdict.reason or "rejected")
            return "rejected"
        assert seat is not None
        self.outcomes[seat.seat_id] = SeatOutcome(seat.seat_id, "paid", order_id=order_id)
        self.decision = decide_group(self.rules, paid_seats(self.seats, self.outcomes), self.outcomes,
                                     deadline_reached=False)
        return "paid"

    def tick(self, now: datetime) -> None:
        """What the scheduler does at ``now``: release seats past their window, close at the deadline."""
        for seat in self.seats:
            if seat_status(seat, self.outcomes) == "held" and now >= seat.payment_deadline:
                self.outcomes[seat.seat_id] = SeatOutcome(seat.seat_id, "released", reason="payment_window_expired")
        if not self.closed and now >= self.deadline:
            self.decision = decide_group(self.rules, paid_seats(self.seats, self.outcomes), self.outcomes,
                                         deadline_reached=True)
        if self.closed:
            for seat in self.seats:
                if seat_status(seat, self.outcomes) == "held":
                    self.outcomes[seat.seat_id] = SeatOutcome(seat.seat_id, "released", reason="group_closed")
