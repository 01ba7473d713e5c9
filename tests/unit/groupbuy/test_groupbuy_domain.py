"""Campaign rules and the group lifecycle: examples and hypothesis properties (pure, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from services.groupbuy.domain.campaign import CampaignRules, TierRule, validate_campaign
from services.groupbuy.domain.group import (
    GroupBook,
    Seat,
    SeatOutcome,
    decide_group,
    judge_payment,
    seat_key,
    slot_candidates,
)

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def rules(tiers=((2, 20), (3, 30)), auto_complete_min=None, list_price=10000) -> CampaignRules:
    return CampaignRules(
        campaign_id="c1", sku="s", list_price=list_price, tiers=tuple(TierRule(size, p) for size, p in tiers),
        starts_at=T0 - timedelta(days=1), ends_at=T0 + timedelta(days=7), stock=100,
        group_window=timedelta(hours=24), seat_payment_window=timedelta(minutes=15),
        auto_complete_min=auto_complete_min)


def validate(tiers, list_price=10000, **kw):
    args = dict(list_price=list_price, tiers=tiers, starts_at=T0, ends_at=T0 + timedelta(days=1), stock=5,
                group_window=timedelta(hours=24), seat_payment_window=timedelta(minutes=15), per_user_limit=None,
                auto_complete_min=None)
    args.update(kw)
    return [p.code for p in validate_campaign(**args)]


# ------------------------------------------------------------------ campaign rules


def test_prices_percent_rounds_the_discount_down_and_amount_never_below_zero():
    assert TierRule(2, percent_off=33).price(999) == 999 - 329
    assert TierRule(2, amount_off=500).price(400) == 0
    assert TierRule(2, percent_off=100).price(5000) == 0


def test_valid_campaign_has_no_problems_and_each_invalid_one_a_clear_code():
    assert validate([TierRule(2, 20), TierRule(3, 30)]) == []
    assert validate([TierRule(3, 20), TierRule(2, 30)]) == ["tiers_not_increasing"]
    assert validate([TierRule(2, 30), TierRule(3, 30)]) == ["discounts_not_increasing"]
    assert validate([TierRule(2, amount_off=20000)]) == ["price_below_zero"]
    assert validate([TierRule(2, 20, 100)]) == ["invalid_tiers"]
    assert validate([]) == ["invalid_tiers"]
    assert validate([TierRule(2, 20)], ends_at=T0) == ["invalid_window"]
    assert validate([TierRule(3, 20)], auto_complete_min=3) == ["invalid_auto_complete_min"]
    assert validate([TierRule(3, 20)], auto_complete_min=2) == []
    assert validate([TierRule(2, 20)], stock=0) == ["invalid_stock"]
    assert validate([TierRule(2, 20)], per_user_limit=0) == ["invalid_per_user_limit"]


@given(hs.lists(hs.tuples(hs.integers(2, 20), hs.integers(1, 100)), min_size=1, max_size=5),
       hs.integers(1, 10**7))
def test_a_valid_campaign_has_strictly_increasing_sizes_and_strictly_decreasing_non_negative_prices(raw, price):
    tiers = [TierRule(size, p) for size, p in raw]
    if not validate(tiers, list_price=price):
        prices = [t.price(price) for t in tiers]
        assert all(a.size < b.size for a, b in itertools.pairwise(tiers))
        assert all(a > b for a, b in itertools.pairwise(prices))
        assert all(p >= 0 for p in prices)


def test_closing_tier_best_reached_then_auto_complete_then_none():
    r = rules(tiers=((3, 10), (5, 25)), auto_complete_min=2)
    assert r.closing_tier(6) == TierRule(5, 25)
    assert r.closing_tier(4) == TierRule(3, 10)
    assert r.closing_tier(2) == TierRule(3, 10)
    assert r.closing_tier(1) is None
    assert rules().closing_tier(1) is None


def test_group_deadline_never_after_the_campaign_ends():
    r = rules()
    assert r.group_deadline(T0) == T0 + timedelta(hours=24)
    assert r.group_deadline(r.ends_at - timedelta(hours=1)) == r.ends_at


# ------------------------------------------------------------------ seats and payments


def seat(slot, gen=1, user="u", deadline=T0 + timedelta(minutes=15)):
    return Seat(seat_key("g", slot, gen), "g", slot, gen, user, T0, deadline)


def test_slot_candidates_free_slots_and_next_generation_of_released_ones():
    seats = [seat(1), seat(2, user="v")]
    assert slot_candidates(3, seats, {}) == [(3, 1)]
    released = {seats[0].seat_id: SeatOutcome(seats[0].seat_id, "released")}
    assert slot_candidates(3, seats, released) == [(1, 2), (3, 1)]
    paid = {seats[0].seat_id: SeatOutcome(seats[0].seat_id, "paid", "o")}
    assert slot_candidates(2, seats, paid) == []


@pytest.mark.parametrize(("outcome", "closed", "completed", "expected"), [
    (None, False, T0, ("accept", None)),
    (None, False, T0 + timedelta(minutes=16), ("release_first", "payment_window_expired")),
    (None, True, T0, ("reject", "group_closed")),
    (SeatOutcome("g:1:1", "paid", "o-1"), False, T0, ("duplicate", None)),
    (SeatOutcome("g:1:1", "paid", "o-0"), False, T0, ("reject", "seat_already_paid")),
    (SeatOutcome("g:1:1", "released"), False, T0, ("reject", "seat_released")),
])
def test_judge_payment(outcome, closed, completed, expected):
    verdict = judge_payment(seat=seat(1), outcome=outcome, order_id="o-1", completed_at=completed,
                            group_closed=closed)
    assert (verdict.action, verdict.reason) == expected


def test_judge_payment_of_a_stranger():
    verdict = judge_payment(seat=None, outcome=None, order_id="o", completed_at=T0, group_closed=False)
    assert (verdict.action, verdict.reason) == ("reject", "not_a_member")


def test_decide_group_at_once_only_with_the_largest_tier_and_at_the_deadline_otherwise():
    r = rules()
    seats = [seat(i, user=f"u{i}") for i in (1, 2, 3)]
    paid = {s.seat_id: SeatOutcome(s.seat_id, "paid", f"o{s.slot}") for s in seats}
    assert decide_group(r, seats[:2], paid, deadline_reached=False) is None
    at_once = decide_group(r, seats, paid, deadline_reached=False)
    assert at_once is not None and at_once.outcome == "formed" and at_once.tier == TierRule(3, 30)
    assert [(m.user_id, m.order_id, m.price) for m in at_once.members] == [("u1", "o1", 7000), ("u2", "o2", 7000),
                                                                          ("u3", "o3", 7000)]
    two = decide_group(r, seats[:2], paid, deadline_reached=True)
    assert two is not None and two.tier == TierRule(2, 20) and {m.price for m in two.members} == {8000}
    one = decide_group(r, seats[:1], paid, deadline_reached=True)
    assert one is not None and one.outcome == "failed" and one.refund_order_ids == ("o1",)


# ------------------------------------------------------------------ properties of the whole lifecycle

users = hs.sampled_from([f"u{i}" for i in range(8)])
step = hs.one_of(
    hs.tuples(hs.just("join"), users, hs.integers(0, 30)),
    hs.tuples(hs.just("pay"), users, hs.integers(0, 30)),
    hs.tuples(hs.just("tick"), users, hs.integers(0, 30)),
)
tier_sets = hs.sampled_from([((2, 20), (3, 30)), ((2, 10),), ((3, 10), (5, 25)), ((2, 10), (4, 20), (6, 30))])


@settings(max_examples=300, deadline=None)
@given(tier_sets, hs.sampled_from([None, 1]), hs.lists(step, max_size=60))
def test_lifecycle_invariants_under_any_sequence_of_joins_payments_and_time(tiers, auto, steps):
    r = rules(tiers=tiers, auto_complete_min=auto if auto is not None and auto < tiers[0][0] else None)
    book = GroupBook(r, "g", deadline=T0 + timedelta(hours=2))
    now = T0
    paid_orders: list[str] = []
    order_seq = 0
    first_decision = None
    for kind, user, minutes in steps:
        now += timedelta(minutes=minutes)
        if kind == "join":
            book.join(user, now)
        elif kind == "pay":
            order_seq += 1
            order = f"o{order_seq}"
            if book.pay(user, order, now) == "paid":
                paid_orders.append(order)
        else:
            book.tick(now)
        if first_decision is None:
            first_decision = book.decision
        # held + paid seats never exceed the largest tier, one per slot, one per user
        live = [s for s in book.seats if book.outcomes.get(s.seat_id, SeatOutcome("", "paid")).outcome != "released"]
        assert len(live) <= r.max_seats
        assert len({s.slot for s in live}) == len(live)
        assert len({s.user_id for s in book.seats}) == len({s.seat_id for s in book.seats})
        # an outcome, once decided, never changes
        assert book.decision is first_decision or first_decision is None
    book.tick(book.deadline)
    decision = book.decision
    assert decision is not None, "every group is decided at its deadline"
    members = {m.order_id for m in decision.members}
    refunds = set(decision.refund_order_ids)
    # every accepted payment is accounted for exactly once: a member or a refund
    assert set(paid_orders) == members | refunds and not members & refunds
    assert not set(paid_orders) & set(book.rejected_orders)
    if decision.outcome == "formed":
        assert decision.tier is not None and len({m.price for m in decision.members}) == 1
        assert len(decision.members) >= (r.auto_complete_min or decision.tier.size)
        assert len(decision.members) <= r.max_seats
    else:
        assert decision.members == () and len(refunds) < r.smallest_tier.size
    # nothing is held after the close
    assert all(s.seat_id in book.outcomes for s in book.seats)
