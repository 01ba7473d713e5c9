"""Pure rules of the referral service: codes, refusals, flags, the ledger, statuses (microseconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.referral.domain.codes import ALPHABET, generate_code, looks_like_code, normalize_code
from services.referral.domain.milestones import (
    FISSION_EXPERT,
    HIGH_FISSION_USER,
    LedgerState,
    Progress,
    next_milestone,
    next_state,
)
from services.referral.domain.rules import (
    BindingFacts,
    BindingPolicy,
    Flag,
    Refusal,
    flags_for,
    is_self_invite,
    ordered_before,
    over_daily_limit,
    refusal_for,
    shares_with_many,
    uses_inviter_device,
    window_passed,
    would_make_cycle,
)
from services.referral.domain.status import (
    ReferralStatus,
    is_active,
    mask_id,
    period_start,
    referral_status,
    utc_day,
)

T0 = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)  # a Wednesday
THRESHOLDS = {HIGH_FISSION_USER: 3, FISSION_EXPERT: 5}
POLICY = BindingPolicy()


def facts(**overrides: object) -> BindingFacts:
    values: dict[str, object] = {"invitee_id": "bob", "inviter_id": "alice", "bound_at": T0 + timedelta(hours=1),
                                 "registered_at": T0}
    values.update(overrides)
    return BindingFacts(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ codes


def test_codes_use_the_unambiguous_alphabet() -> None:
    assert not set("01OIL") & set(ALPHABET) and len(ALPHABET) == 31
    codes = {generate_code() for _ in range(2000)}
    assert len(codes) == 2000 and all(len(c) == 8 and looks_like_code(c) for c in codes)
    assert len(generate_code(12)) == 12


@given(st.text(alphabet=ALPHABET.lower() + ALPHABET + " -_", max_size=20))
def test_normalize_is_idempotent_and_strips_separators(raw: str) -> None:
    once = normalize_code(raw)
    assert normalize_code(once) == once
    assert " " not in once and "-" not in once and once == once.upper()


def test_lookalikes_are_not_codes() -> None:
    assert not looks_like_code("ABCD0OIL") and not looks_like_code("") and looks_like_code("K7QM2ZPA")


# ------------------------------------------------------------------ refusals, one by one


def test_self_invite() -> None:
    assert is_self_invite("a", "a") and not is_self_invite("a", "b")


def test_window_is_inclusive_of_its_last_moment() -> None:
    week = timedelta(days=7)
    assert not window_passed(T0, T0 + week, week)
    assert window_passed(T0, T0 + week + timedelta(milliseconds=1), week)


def test_ordered_before_is_judged_by_event_time() -> None:
    assert ordered_before(T0 - timedelta(seconds=1), T0)
    assert not ordered_before(T0, T0)
    assert not ordered_before(T0 + timedelta(days=1), T0), "an order after the binding time never refuses it"
    assert not ordered_before(None, T0)


def test_inviter_device() -> None:
    assert uses_inviter_device("d1", "d1")
    assert not uses_inviter_device("d1", "d2") and not uses_inviter_device(None, None)
    assert not uses_inviter_device(None, "d1")


def test_cycles() -> None:
    assert would_make_cycle("alice", "bob", ["alice"])  # bob was invited by alice
    assert would_make_cycle("alice", "carol", ["bob", "alice"])  # carol <- bob <- alice
    assert would_make_cycle("alice", "alice", [])
    assert not would_make_cycle("dave", "carol", ["bob", "alice"])


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"inviter_id": None}, Refusal.UNKNOWN_CODE),
    ({"inviter_id": "bob"}, Refusal.SELF_INVITE),
    ({"already_bound": True}, Refusal.ALREADY_BOUND),
    ({"registered_at": None}, Refusal.NOT_REGISTERED),
    ({"bound_at": T0 + timedelta(days=8)}, Refusal.WINDOW_PASSED),
    ({"earliest_order_at": T0}, Refusal.ALREADY_ORDERED),
    ({"invitee_device": "d", "inviter_device": "d"}, Refusal.INVITER_DEVICE),
    ({"inviter_chain": ["bob"]}, Refusal.WOULD_MAKE_CYCLE),
    ({}, None),
    ({"earliest_order_at": T0 + timedelta(hours=2)}, None),
])
def test_refusal_for_each_rule(overrides: dict[str, object], expected: Refusal | None) -> None:
    assert refusal_for(facts(**overrides), POLICY) == expected


def test_refusals_come_in_a_stable_order() -> None:
    everything_wrong = facts(inviter_id="bob", already_bound=True, registered_at=None)
    assert refusal_for(everything_wrong, POLICY) == Refusal.SELF_INVITE
    assert refusal_for(facts(already_bound=True, registered_at=None), POLICY) == Refusal.ALREADY_BOUND


@given(
    inviter=st.sampled_from(["alice", "bob", "carol", None]),
    bound=st.booleans(), registered=st.booleans(), hours=st.integers(0, 400),
    ordered_hours=st.one_of(st.none(), st.integers(-100, 400)),
    chain=st.lists(st.sampled_from(["alice", "bob", "carol", "dave"]), max_size=4),
)
def test_refusal_for_is_total_and_consistent(inviter: str | None, bound: bool, registered: bool, hours: int,
                                             ordered_hours: int | None, chain: list[str]) -> None:
    f = facts(inviter_id=inviter, already_bound=bound, registered_at=T0 if registered else None,
              bound_at=T0 + timedelta(hours=hours), inviter_chain=chain,
              earliest_order_at=None if ordered_hours is None else T0 + timedelta(hours=ordered_hours))
    refusal = refusal_for(f, POLICY)
    if refusal is None:  # accepted only if no rule objects
        assert inviter is not None and inviter != "bob" and not bound and registered
        assert hours <= 7 * 24 and "bob" not in chain
        assert ordered_hours is None or ordered_hours >= hours
    else:
        assert refusal in Refusal


# ------------------------------------------------------------------ flags


def test_daily_limit_flags_the_21st() -> None:
    assert not over_daily_limit(20, 20) and over_daily_limit(21, 20)


def test_shared_device_or_ip() -> None:
    assert not shares_with_many(1, 3) and shares_with_many(2, 3)


def test_flags_for_collects_every_rule_that_fires() -> None:
    assert flags_for(daily_slot=1, others_on_device=0, others_on_ip=0, policy=POLICY) == []
    assert flags_for(daily_slot=21, others_on_device=2, others_on_ip=4, policy=POLICY) == [
        Flag.DAILY_LIMIT, Flag.SHARED_DEVICE, Flag.SHARED_IP]
    strict = BindingPolicy(daily_limit=1, shared_device_threshold=2, shared_ip_threshold=2)
    assert flags_for(daily_slot=2, others_on_device=1, others_on_ip=0, policy=strict) == [
        Flag.DAILY_LIMIT, Flag.SHARED_DEVICE]


# ------------------------------------------------------------------ ledger and milestones


def test_milestones_in_order_and_once() -> None:
    state = LedgerState()
    announced = []
    for delta in [1, 1, 1, -1, 1, 1, 1, -1, -1, 1, 1]:
        step = next_state(state, delta, THRESHOLDS)
        announced += [(name, step.state.qualified_count) for name in step.newly_reached]
        state = step.state
    assert announced == [(HIGH_FISSION_USER, 3), (FISSION_EXPERT, 5)]
    assert state.seq == 11 and state.qualified_count == 5


def test_a_big_jump_reaches_every_milestone_in_threshold_order() -> None:
    step = next_state(LedgerState(seq=4, qualified_count=4), 1, {FISSION_EXPERT: 5, HIGH_FISSION_USER: 3})
    assert step.newly_reached == (HIGH_FISSION_USER, FISSION_EXPERT)


def test_steps_are_plus_or_minus_one() -> None:
    with pytest.raises(ValueError):
        next_state(LedgerState(), 2, THRESHOLDS)


@given(st.lists(st.sampled_from([1, -1]), max_size=60),
       st.integers(1, 10), st.integers(1, 10))
def test_ledger_properties(deltas: list[int], high: int, expert: int) -> None:
    thresholds = {HIGH_FISSION_USER: high, FISSION_EXPERT: expert}
    state = LedgerState()
    announced: list[str] = []
    peak = 0
    expected = 0
    for delta in deltas:
        step = next_state(state, delta, thresholds)
        expected = max(0, expected + delta)
        peak = max(peak, expected)
        assert step.state.seq == state.seq + 1
        assert step.state.qualified_count == expected
        assert all(step.state.qualified_count >= thresholds[name] for name in step.newly_reached)
        announced += step.newly_reached
        state = step.state
    assert len(announced) == len(set(announced)), "each milestone at most once"
    assert set(announced) == {name for name, at in thresholds.items() if peak >= at}
    assert state.milestones == frozenset(announced)


def test_next_milestone_progress() -> None:
    assert next_milestone(0, THRESHOLDS) == Progress(HIGH_FISSION_USER, 3, 3)
    assert next_milestone(3, THRESHOLDS) == Progress(FISSION_EXPERT, 5, 2)
    assert next_milestone(5, THRESHOLDS) is None


# ------------------------------------------------------------------ statuses and views


@pytest.mark.parametrize(("flagged", "decision", "qualified", "disqualified", "expected"), [
    (False, None, False, False, ReferralStatus.BOUND),
    (False, None, True, False, ReferralStatus.QUALIFIED),
    (False, None, True, True, ReferralStatus.DISQUALIFIED),
    (True, None, False, False, ReferralStatus.UNDER_REVIEW),
    (True, "reject", False, False, ReferralStatus.REJECTED),
    (True, "approve", False, False, ReferralStatus.BOUND),
    (True, "approve", True, False, ReferralStatus.QUALIFIED),
])
def test_referral_status(flagged: bool, decision: str | None, qualified: bool, disqualified: bool,
                         expected: ReferralStatus) -> None:
    assert referral_status(flagged=flagged, decision=decision, qualified=qualified,  # type: ignore[arg-type]
                           disqualified=disqualified) == expected


def test_only_unflagged_or_approved_bindings_are_active() -> None:
    assert is_active(False, None) and is_active(True, "approve")
    assert not is_active(True, None) and not is_active(True, "reject")


@given(st.text(min_size=1, max_size=64))
def test_mask_never_reveals_more_than_two_characters(user_id: str) -> None:
    masked = mask_id(user_id)
    assert "***" in masked and len(masked.replace("***", "")) <= 2
    if len(user_id) > 3:
        assert user_id not in masked


def test_period_starts() -> None:
    now = datetime(2026, 11, 21, 15, 30, tzinfo=UTC)  # a Saturday
    assert period_start("day", now) == datetime(2026, 11, 21, tzinfo=UTC)
    assert period_start("week", now) == datetime(2026, 11, 16, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert utc_day(now) == "2026-11-21"


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_periods_nest_and_contain_now(now: datetime) -> None:
    day, week, month = (period_start(p, now) for p in ("day", "week", "month"))
    assert day <= now and week <= day and week.weekday() == 0
    assert month <= day and month.day == 1


def test_business_defaults_are_configurable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.referral.settings import ReferralSettings

    defaults = ReferralSettings()
    assert (defaults.binding_window_days, defaults.daily_binding_limit, defaults.high_fission_at,
            defaults.fission_expert_at, defaults.qualifying_min_amount, defaults.qualification_hold_days) == (
        7, 20, 3, 5, 1, 7)
    assert defaults.share_base_url == "https://pinwheel.example/r/"
    monkeypatch.setenv("REFERRAL_DAILY_BINDING_LIMIT", "5")
    monkeypatch.setenv("REFERRAL_SHARE_BASE_URL", "https://x.example/i/")
    configured = ReferralSettings()
    assert configured.daily_binding_limit == 5 and configured.share_base_url == "https://x.example/i/"
