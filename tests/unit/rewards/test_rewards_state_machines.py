"""The coupon state machine and the commission ledger, with hypothesis properties (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.rewards.domain import coupons as c
from services.rewards.domain import ledger as lg

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)
COUPON = c.Coupon(code="PW1", user_id="bob", kind="amount_off", value=2000, threshold=5000, issued_at=T0,
                  expires_at=T0 + timedelta(days=7))


def step(state: c.CouponState, decision: c.Decision) -> c.CouponState:
    return decision.state if isinstance(decision, c.Transition | c.NoChange) else state


def test_reserve_checks_owner_threshold_expiry_and_other_orders():
    s0 = c.CouponState()
    kw = {"now": T0, "reservation_ttl": TTL}
    assert c.reserve(COUPON, s0, user_id="eve", order_id="o1", order_amount=9000, **kw).code == "coupon_not_owned"
    assert c.reserve(COUPON, s0, user_id="bob", order_id="o1", order_amount=4999, **kw).code == "threshold_not_met"
    late = {"now": COUPON.expires_at, "reservation_ttl": TTL}
    assert c.reserve(COUPON, s0, user_id="bob", order_id="o1", order_amount=9000, **late).code == "coupon_expired"
    held = c.reserve(COUPON, s0, user_id="bob", order_id="o1", order_amount=5000, **kw)
    assert isinstance(held, c.Transition) and held.state.status == "reserved" and held.version == 1
    again = c.reserve(COUPON, held.state, user_id="bob", order_id="o1", order_amount=5000, **kw)
    assert isinstance(again, c.NoChange)
    other = c.reserve(COUPON, held.state, user_id="bob", order_id="o2", order_amount=5000, **kw)
    assert (other.status, other.code) == (409, "coupon_reserved")
    lapsed = {"now": T0 + TTL, "reservation_ttl": TTL}
    assert c.status_at(COUPON, held.state, T0 + TTL, TTL) == "available"
    taken_over = c.reserve(COUPON, held.state, user_id="bob", order_id="o2", order_amount=5000, **lapsed)
    assert isinstance(taken_over, c.Transition) and taken_over.state.order_id == "o2"


def test_confirm_release_revoke_restore_and_expiry():
    held = step(c.CouponState(), c.reserve(COUPON, c.CouponState(), user_id="bob", order_id="o1",
                                           order_amount=6000, now=T0, reservation_ttl=TTL))
    assert c.release(held, order_id="o2", now=T0).code == "reservation_not_found"
    released = step(held, c.release(held, order_id="o1", now=T0))
    assert released.status == "available"
    assert isinstance(c.release(released, order_id="o1", now=T0), c.NoChange), "a repeated DELETE succeeds"
    redeemed = step(held, c.confirm(COUPON, held, user_id="bob", order_id="o1", now=T0, reservation_ttl=TTL))
    assert redeemed.status == "redeemed" and c.status_at(COUPON, redeemed, T0, TTL) == "redeemed"
    assert c.release(redeemed, order_id="o1", now=T0).code == "coupon_redeemed"
    assert c.revoke(redeemed, cause="d", now=T0, reason="x").code == "coupon_redeemed"
    restored = step(redeemed, c.restore(COUPON, redeemed, order_id="o1", now=T0))
    assert restored.status == "available"
    # a replayed completion and refund of o1 change nothing any more
    assert isinstance(c.confirm(COUPON, restored, user_id="bob", order_id="o1", now=T0, reservation_ttl=TTL),
                      c.NoChange)
    assert isinstance(c.restore(COUPON, restored, order_id="o1", now=T0), c.NoChange)
    assert c.restore(COUPON, redeemed, order_id="o1", now=COUPON.expires_at).code == "coupon_expired"
    assert c.status_at(COUPON, restored, COUPON.expires_at, TTL) == "expired"
    revoked = step(restored, c.revoke(restored, cause="d", now=T0, reason="x"))
    assert revoked.status == "revoked"
    assert isinstance(c.revoke(revoked, cause="d2", now=T0, reason="x"), c.NoChange)
    assert c.reserve(COUPON, revoked, user_id="bob", order_id="o3", order_amount=9000, now=T0,
                     reservation_ttl=TTL).code == "coupon_revoked"
    assert c.confirm(COUPON, c.CouponState(), user_id="eve", order_id="o4", now=T0,
                     reservation_ttl=TTL).code == "coupon_not_owned"


ACTIONS = st.lists(st.tuples(
    st.sampled_from(["reserve", "release", "confirm", "revoke", "restore", "sweep"]),
    st.sampled_from(["o1", "o2", "o3"]),
    st.integers(min_value=0, max_value=10_000),  # minutes after T0
    st.integers(min_value=0, max_value=9000),  # order amount
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_coupon_state_machine_properties(actions):
    state = c.CouponState()
    redeemed_by: set[str] = set()
    for action, order, minutes, amount in sorted(actions, key=lambda a: a[2]):
        now = T0 + timedelta(minutes=minutes)
        before = state
        if action == "reserve":
            d = c.reserve(COUPON, state, user_id="bob", order_id=order, order_amount=amount, now=now,
                          reservation_ttl=TTL)
            if isinstance(d, c.Transition):
                assert amount >= COUPON.threshold and now < COUPON.expires_at
                assert before.status != "revoked" and before.status != "redeemed"
        elif action == "release":
            d = c.release(state, order_id=order, now=now)
        elif action == "confirm":
            d = c.confirm(COUPON, state, user_id="bob", order_id=order, now=now, reservation_ttl=TTL)
            if isinstance(d, c.Transition):
                assert order not in redeemed_by, "an order confirms a coupon at most once, ever"
                redeemed_by.add(order)
        elif action == "revoke":
            d = c.revoke(state, cause=order, now=now, reason="x")
        elif action == "restore":
            d = c.restore(COUPON, state, order_id=order, now=now)
        else:
            d = c.release_lapsed(state, now, TTL)
        state = step(state, d)
        # invariants
        if isinstance(d, c.Transition):
            assert d.version == before.version + 1 == state.version
        else:
            assert state == before
        if before.status == "revoked":
            assert state.status == "revoked", "revoked is final"
        if state.status == "reserved":
            assert state.order_id is not None and state.reserved_at is not None
        if state.status == "redeemed":
            assert state.order_id in redeemed_by
        assert c.status_at(COUPON, state, now, TTL) in ("available", "reserved", "redeemed", "expired", "revoked")


# ------------------------------------------------------------------ ledger

LEDGER_OPS = st.lists(st.tuples(
    st.sampled_from(["credit", "credit", "reverse", "withdraw"]),
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=0, max_value=20 * 24),  # hours after T0
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(LEDGER_OPS)
def test_ledger_properties(ops):
    state = lg.LedgerState()
    entries: list[lg.Entry] = []
    credits: list[lg.Entry] = []
    reversed_refs: set[str] = set()
    for i, (op, amount, hours) in enumerate(sorted(ops, key=lambda o: o[2])):
        now = T0 + timedelta(hours=hours)
        entry: lg.Entry | lg.Refusal | None = None
        if op == "credit":
            entry = lg.credit(state, ref=f"r{i}", amount=amount, available_at=now + timedelta(days=7), at=now)
            credits.append(entry)
        elif op == "reverse" and credits:
            target = credits[amount % len(credits)]
            if target.ref in reversed_refs:
                continue
            reversed_refs.add(target.ref)
            entry = lg.reverse(state, credit_ref=target.ref, amount=target.amount, at=now)
        elif op == "withdraw":
            available_before = state.available(now)
            entry = lg.withdraw(state, withdrawal_id=f"w{i}", amount=amount, minimum=1000, at=now)
            if isinstance(entry, lg.Entry):
                assert 1000 <= amount <= available_before and state.balance >= 0
            else:
                assert amount < 1000 or amount > available_before or state.balance < 0
                continue
        if entry is None:
            continue
        assert isinstance(entry, lg.Entry)
        assert entry.seq == state.seq + 1
        state = entry.after
        entries.append(entry)
        # invariants
        assert state.balance == sum(e.amount for e in entries)
        assert state.withdrawn == -sum(e.amount for e in entries if e.kind == "withdrawal")
        assert state.pending(now) >= 0
        assert state.pending(now) + state.available(now) == state.balance
        only_credits_and_withdrawals = not reversed_refs
        if only_credits_and_withdrawals:
            assert state.available(now) >= 0, "without reversals the balance can never be overdrawn"
        assert lg.rebuild(entries) == state


def test_reversal_of_withdrawn_money_is_negative_and_blocks_withdrawals():
    s0 = lg.LedgerState()
    c1 = lg.credit(s0, ref="r1", amount=1500, available_at=T0 + timedelta(days=7), at=T0)
    assert c1.after.pending(T0) == 1500 and c1.after.available(T0) == 0
    later = T0 + timedelta(days=8)
    assert c1.after.pending(later) == 0 and c1.after.available(later) == 1500
    w = lg.withdraw(c1.after, withdrawal_id="w1", amount=1200, minimum=1000, at=later)
    assert isinstance(w, lg.Entry) and w.after.withdrawn == 1200
    r = lg.reverse(w.after, credit_ref="r1", amount=1500, at=later)
    assert r.amount == -1500 and r.after.balance == -1200
    c2 = lg.credit(r.after, ref="r2", amount=5000, available_at=later, at=later)
    # balance 3800 >= 0 again: withdrawals allowed from the available part
    assert lg.withdraw(c2.after, withdrawal_id="w2", amount=999, minimum=1000, at=later).code == (
        "below_minimum_withdrawal")
    assert isinstance(lg.withdraw(c2.after, withdrawal_id="w2", amount=3800, minimum=1000, at=later), lg.Entry)
    assert lg.withdraw(r.after, withdrawal_id="w3", amount=1000, minimum=1000, at=later).code == "balance_negative"
    pending = lg.credit(s0, ref="p", amount=500, available_at=T0 + timedelta(days=7), at=T0)
    undone = lg.reverse(pending.after, credit_ref="p", amount=500, at=T0)
    assert undone.after.pending(T0) == 0 and undone.after.available(T0) == 0 and undone.after.holds == ()
