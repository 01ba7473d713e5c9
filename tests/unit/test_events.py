"""The envelope and the typed schemas: what is accepted, what is refused, how it is written."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import EVENTS, TOPICS, CloudEvent
from shared.events import schemas as s
from shared.events.catalog import dlq_topic
from shared.events.envelope import new_event_id, uuid5_hex
from shared.kafka import Rejection, make_event, parse_event
from tests.support.events import order_completed, user_registered


def test_every_contract_event_type_is_in_the_catalog_with_its_topic_and_key():
    contract = {
        "users.events": ({"user.registered"}, "user_id"),
        "orders.events": ({"order.completed", "order.refunded"}, "user_id"),
        "referral.events": ({"referral.bound", "referral.qualified", "referral.disqualified",
                             "referral.milestone_reached", "referral.flagged"}, "inviter_id"),
        "groupbuy.events": ({"groupbuy.group_opened", "groupbuy.member_joined", "groupbuy.member_paid",
                             "groupbuy.group_formed", "groupbuy.group_failed", "groupbuy.seat_released",
                             "groupbuy.payment_rejected"}, "group_id"),
        "rewards.events": ({"rewards.coupon_issued", "rewards.coupon_redeemed", "rewards.coupon_revoked",
                            "rewards.commission_credited", "rewards.commission_reversed",
                            "rewards.withdrawal_requested"}, "user_id"),
    }
    assert set(TOPICS) == set(contract)
    for topic, (types, key) in contract.items():
        assert {spec.type for spec in TOPICS[topic]} == types
        assert {spec.key_field for spec in TOPICS[topic]} == {key}
    assert dlq_topic("orders.events") == "orders.events.dlq"


def test_a_contract_example_parses_and_times_are_normalised_to_utc():
    event = order_completed("u1", amount=2000, group_id="g1", coupon_codes=["C1"])
    event["time"] = "2026-11-21T18:00:00+08:00"
    parsed = parse_event(json.dumps(event).encode())
    assert isinstance(parsed, CloudEvent)
    assert isinstance(parsed.data, s.OrderCompleted)
    assert parsed.time == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert parsed.data.amount == 2000 and parsed.data.group_id == "g1"
    assert json.loads(parsed.to_json_bytes())["time"] == "2026-11-21T10:00:00Z"


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda e: e["data"].update(amount=20.5), "invalid_event"),
    (lambda e: e["data"].update(amount="2000"), "invalid_event"),
    (lambda e: e["data"].update(amount=-1), "invalid_event"),
    (lambda e: e["data"].update(currency="USD"), "invalid_event"),
    (lambda e: e["data"].update(completed_at="2026-11-21T10:00:00"), "invalid_event"),
    (lambda e: e["data"].pop("order_id"), "invalid_event"),
    (lambda e: e.pop("id"), "invalid_event"),
    (lambda e: e.update(specversion="0.3", type="x.unknown"), "invalid_envelope"),
])
def test_bad_events_are_rejected_with_a_reason(mutate, reason):
    event = order_completed("u1")
    mutate(event)
    parsed = parse_event(json.dumps(event).encode())
    assert isinstance(parsed, Rejection)
    assert parsed.reason == reason


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe", "invalid_json"), (b"not json", "invalid_json"), (b"[1,2]", "invalid_envelope"),
    (None, "empty_record"), (b" " * 1_000_001, "too_large"),
])
def test_unparseable_records_are_rejected(raw, reason):
    parsed = parse_event(raw)
    assert isinstance(parsed, Rejection) and parsed.reason == reason


def test_a_well_formed_event_of_an_unknown_type_is_ignored_not_dead_lettered():
    event = user_registered("u1")
    event["type"] = "user.deleted"
    assert parse_event(json.dumps(event).encode()) is None


def test_mongo_operators_in_strings_stay_plain_data():
    event = user_registered("u1", referral_code="$where")
    parsed = parse_event(json.dumps(event).encode())
    assert isinstance(parsed, CloudEvent) and parsed.data.referral_code == "$where"
    event["data"]["user_id"] = {"$gt": ""}
    assert isinstance(parse_event(json.dumps(event).encode()), Rejection)


def test_made_events_carry_type_subject_and_round_trip():
    data = s.ReferralQualified(inviter_id="alice", invitee_id="bob", order_id="o1", qualified_count=1,
                               qualified_at=datetime.now(UTC), source_event_id="e1")
    event = make_event(data, source="urn:pinwheel:referral", event_id="fixed")
    assert event.type == "referral.qualified" and event.subject == "alice" and event.id == "fixed"
    again = parse_event(event.to_json_bytes())
    assert isinstance(again, CloudEvent) and again.data == data


@given(st.integers(min_value=0, max_value=10**12))
def test_any_non_negative_integer_amount_is_money(amount):
    assert s.OrderRefunded(order_id="o", user_id="u", refunded_amount=amount, full=True,
                           refunded_at=datetime.now(UTC)).refunded_amount == amount


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_no_float_is_money(value):
    with pytest.raises(ValidationError):
        s.OrderRefunded(order_id="o", user_id="u", refunded_amount=value, full=True,  # type: ignore[arg-type]
                        refunded_at=datetime.now(UTC))


def test_every_schema_has_a_required_field_and_is_in_the_catalog_once():
    models = [spec.data_model for spec in EVENTS.values()]
    assert len(models) == len(set(models))
    for model in models:
        assert any(field.is_required() for field in model.model_fields.values()), model


@given(st.text(max_size=200))
def test_uuid5_hex_is_the_standard_uuid5(name: str) -> None:
    """The fast event/trace id derivation gives exactly what ``uuid.uuid5`` gives, so ids derived
    before and after the change are the same (replays land on the same ids and traces)."""
    assert uuid5_hex(name) == uuid.uuid5(uuid.NAMESPACE_URL, name).hex
    assert new_event_id(name, "x") == str(uuid.uuid5(uuid.NAMESPACE_URL, f"pinwheel:{name}|x"))
