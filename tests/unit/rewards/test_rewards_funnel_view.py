"""The live funnel view from raw tallies (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.rewards.domain.funnel import FUNNEL_EVENT_TYPES, Tallies, summarize
from shared.events.catalog import EVENTS

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def test_stages_and_amounts_from_tallies():
    funnel = summarize(Tallies(
        events={"referral.bound": 8, "referral.qualified": 7, "referral.disqualified": 1, "referral.flagged": 2,
                "groupbuy.group_opened": 5, "groupbuy.group_formed": 2, "groupbuy.group_failed": 1},
        coupons_issued=23, coupon_actions={"confirm": 4, "revoke": 1},
        ledger_amounts={"credit": 1500, "reversal": -500, "withdrawal": -1000},
        ledger_counts={"credit": 3, "reversal": 1, "withdrawal": 1}), NOW)
    assert (funnel.referral.bound, funnel.referral.net_qualified, funnel.referral.flagged) == (8, 6, 2)
    assert (funnel.groupbuy.opened, funnel.groupbuy.formed, funnel.groupbuy.failed, funnel.groupbuy.open_now) == (
        5, 2, 1, 2)
    assert (funnel.coupons.issued, funnel.coupons.redeemed, funnel.coupons.revoked) == (23, 4, 1)
    assert (funnel.commissions.credited, funnel.commissions.reversed, funnel.commissions.withdrawn) == (1500, 500, 1000)
    assert funnel.commissions.currency == "CNY"


def test_nothing_seen_is_all_zero():
    funnel = summarize(Tallies(), NOW)
    assert funnel.referral.bound == funnel.groupbuy.open_now == funnel.commissions.credited == 0


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_open_groups_never_negative(opened, formed, failed):
    funnel = summarize(Tallies(events={"groupbuy.group_opened": opened, "groupbuy.group_formed": formed,
                                       "groupbuy.group_failed": failed}), NOW)
    assert funnel.groupbuy.open_now == max(0, opened - formed - failed)


def test_funnel_types_are_referral_or_groupbuy_events():
    assert {EVENTS[t].topic for t in FUNNEL_EVENT_TYPES} == {"referral.events", "groupbuy.events"}
