"""Junk on the inbound topics: random bytes, invalid JSON, wrong types, missing fields, huge records,
unknown types and Mongo operators in strings and keys. Each record is dead-lettered to `<topic>.dlq`
with a reason by every service consuming the topic, or ignored by the documented rule (unknown types);
no consumer crashes or stalls: a good event produced after the junk is processed."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.kafka import H_CONSUMER, H_OFFSET, H_REASON, MAX_RECORD_BYTES
from tests.support.events import cloud_event, now_rfc3339, order_completed, order_refunded, user_registered
from tests.support.security import Trio
from tests.support.services import eventually, token, unique

pytestmark = pytest.mark.integration

CONSUMERS = {"users.events": ["referral"], "orders.events": ["referral", "groupbuy", "rewards"],
             "referral.events": ["rewards"], "groupbuy.events": ["rewards"]}
DLQ, IGNORED, EITHER = "dlq", "ignored", "either"


@dataclass
class Junk:
    topic: str
    what: str
    value: bytes | None
    expect: str
    offset: int = -1


def _referral_bound(inviter: str, invitee: str) -> dict[str, Any]:
    return cloud_event("referral.bound", {"inviter_id": inviter, "invitee_id": invitee, "code": "K7QM2ZPA",
                                          "bound_at": now_rfc3339(), "channel": "app"}, source="urn:pinwheel:referral")


def _group_formed(initiator: str) -> dict[str, Any]:
    group = unique("g-")
    return cloud_event("groupbuy.group_formed", {
        "group_id": group, "campaign_id": "c-1", "initiator_id": initiator, "tier": {"size": 2, "percent_off": 20},
        "list_price": 10000, "currency": "CNY", "formed_at": now_rfc3339(),
        "members": [{"user_id": initiator, "seat": 1, "order_id": unique("o-"), "price": 8000},
                    {"user_id": unique("m"), "seat": 2, "order_id": unique("o-"), "price": 8000}]},
        source="urn:pinwheel:groupbuy")


TEMPLATES = {"users.events": lambda: user_registered(unique("u")),
             "orders.events": lambda: order_completed(unique("u")),
             "referral.events": lambda: _referral_bound(unique("i"), unique("v")),
             "groupbuy.events": lambda: _group_formed(unique("i"))}

JSON_JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=6)


def _generated(examples: int) -> dict[str, list[tuple[str, bytes]]]:
    """Hypothesis-generated junk, collected (bounded) and then produced in one go."""
    out: dict[str, list[tuple[str, bytes]]] = {"bytes": [], "wrong_type": [], "missing": []}
    settings = hypothesis_settings(max_examples=examples, database=None, derandomize=True, deadline=None,
                                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))

    @settings
    @given(st.binary(max_size=300))
    def random_bytes(value: bytes) -> None:
        out["bytes"].append(("random bytes", value))

    @settings
    @given(st.sampled_from(sorted(TEMPLATES)), st.data())
    def wrong_types(topic: str, data: Any) -> None:
        event = TEMPLATES[topic]()
        field = data.draw(st.sampled_from(sorted(event["data"])))
        bad = data.draw(JSON_JUNK.filter(lambda v, f=field, e=event: not isinstance(v, str) or f in (
            "registered_at", "completed_at", "bound_at", "formed_at", "amount", "list_price", "tier", "members",
            "currency", "channel")).filter(lambda v, f=field, e=event: v != e["data"][f]))
        event["data"][field] = bad
        missing = copy.deepcopy(TEMPLATES[topic]())
        del missing["data"][data.draw(st.sampled_from(sorted(_required(topic))))]
        out["wrong_type"].append((topic, json.dumps(event).encode()))
        out["missing"].append((topic, json.dumps(missing).encode()))

    random_bytes()
    wrong_types()
    return out


def _required(topic: str) -> set[str]:
    return {"users.events": {"user_id", "registered_at"},
            "orders.events": {"order_id", "user_id", "amount", "currency", "completed_at"},
            "referral.events": {"inviter_id", "invitee_id", "code", "bound_at", "channel"},
            "groupbuy.events": {"group_id", "campaign_id", "initiator_id", "tier", "list_price", "members",
                                "formed_at"}}[topic]


def _junk_for(topic: str, generated: dict[str, list[tuple[str, bytes]]]) -> list[Junk]:
    make = TEMPLATES[topic]
    envelope_only = make()
    junk = [Junk(topic, what, value, DLQ) for what, value in generated["bytes"]]
    junk += [Junk(topic, f"wrong type in {t}", v, DLQ) for t, v in generated["wrong_type"] if t == topic]
    junk += [Junk(topic, f"missing field in {t}", v, DLQ) for t, v in generated["missing"] if t == topic]
    junk += [
        Junk(topic, "null record", None, DLQ),
        Junk(topic, "invalid json", b'{"specversion": "1.0", "id": ', DLQ),
        Junk(topic, "not utf-8", b'{"id": "\xff\xfe"}', DLQ),
        Junk(topic, "json array", b"[1, 2, 3]", DLQ),
        Junk(topic, "json string", b'"order.completed"', DLQ),
        Junk(topic, "no data", json.dumps({k: v for k, v in envelope_only.items() if k != "data"}).encode(), DLQ),
        Junk(topic, "data is a list", json.dumps({**make(), "data": [1]}).encode(), DLQ),
        Junk(topic, "wrong specversion of an unknown type", json.dumps({**make(), "type": "x.y",
                                                                        "specversion": "0.3"}).encode(), DLQ),
        Junk(topic, "unknown event type", json.dumps({**make(), "type": "shop.something_new"}).encode(), IGNORED),
        Junk(topic, "operator object as an id", json.dumps(_with(make(), _id_field(topic), {"$gt": ""})).encode(),
             DLQ),
        Junk(topic, "operator keys in data", json.dumps(_with(make(), "$where", "sleep(10000) || true")).encode(),
             EITHER),
        Junk(topic, "operator inside an id string", json.dumps(_with(make(), _id_field(topic),
                                                                     '{"$ne": null}')).encode(), EITHER),
        Junk(topic, "NUL inside an id", json.dumps(_with(make(), _id_field(topic), "a\x00b")).encode(), DLQ),
        Junk(topic, "over the size limit", _padded(make(), MAX_RECORD_BYTES + 10_000), DLQ),
        Junk(topic, "just under the size limit", _padded(make(), MAX_RECORD_BYTES - 1_000), EITHER),
    ]
    if topic == "orders.events":
        junk.append(Junk(topic, "float money", json.dumps(_with(order_refunded(unique("u"), unique("o")),
                                                                "refunded_amount", 10.5)).encode(), DLQ))
        junk.append(Junk(topic, "operator in coupon codes", json.dumps(_with(
            order_completed(unique("u")), "coupon_codes", [{"$regex": ".*"}])).encode(), DLQ))
    return junk


def _id_field(topic: str) -> str:
    return {"users.events": "user_id", "orders.events": "user_id", "referral.events": "invitee_id",
            "groupbuy.events": "initiator_id"}[topic]


def _with(event: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    event["data"][field] = value
    return event


def _padded(event: dict[str, Any], size: int) -> bytes:
    base = json.dumps({**event, "padding": ""}).encode()
    return json.dumps({**event, "padding": "x" * (size - len(base))}).encode()


async def _read_dlq(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                fetch_max_bytes=8_000_000, max_partition_fetch_bytes=4_000_000)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_junk_on_every_inbound_topic_is_dead_lettered_or_ignored_and_never_stalls_a_consumer(
        trio: Trio) -> None:
    bootstrap = trio.referral.runtime.settings.kafka_bootstrap_servers
    prefix = f"{trio.namespace}."
    generated = _generated(examples=12)
    junk = {topic: _junk_for(topic, generated) for topic in CONSUMERS}
    good = {"users.events": user_registered(unique("good")), "orders.events": order_completed(unique("good")),
            "referral.events": _referral_bound(unique("good-i"), unique("good-v")),
            "groupbuy.events": _group_formed(unique("good-g"))}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000, acks="all")
    await producer.start()
    try:
        for topic, records in junk.items():
            for item in records:
                metadata = await producer.send_and_wait(prefix + topic, item.value, key=b"junk", partition=0)
                item.offset = metadata.offset
            await producer.send_and_wait(prefix + topic, json.dumps(good[topic]).encode(), key=b"good", partition=0)
    finally:
        await producer.stop()

    # the good events after the junk are processed by every consumer
    await eventually(lambda: trio.referral.db["inbox"].find_one({"_id": good["users.events"]["id"]}),
                     timeout=90, message="referral processed the good user.registered")
    order_id = good["orders.events"]["data"]["order_id"]
    await eventually(lambda: trio.referral.db["orders"].find_one({"_id": order_id}),
                     timeout=90, message="referral processed the good order")
    for service in (trio.groupbuy, trio.rewards):
        await eventually(lambda s=service: s.db["inbox"].find_one({"_id": good["orders.events"]["id"]}),
                         timeout=90, message=f"{service.runtime.service} processed the good order")

    async def coupons_of(user: str) -> Any:
        response = await trio.rewards.client.get("/v1/me/coupons", headers=token(user))
        return response.json()["coupons"]

    await eventually(lambda: coupons_of(good["referral.events"]["data"]["invitee_id"]), timeout=90,
                     message="rewards processed the good referral.bound")
    await eventually(lambda: coupons_of(good["groupbuy.events"]["data"]["initiator_id"]), timeout=90,
                     message="rewards processed the good group_formed")

    problems = []
    for topic, records in junk.items():
        groups = {f"{trio.namespace}-{service}" for service in CONSUMERS[topic]}
        must = sum(1 for item in records if item.expect == DLQ) * len(groups)
        assert must >= 20 * len(groups), (topic, must)
        dead = await _read_dlq(bootstrap, f"{prefix}{topic}.dlq", must)
        by_key: dict[tuple[str, int], Any] = {}
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers}
            by_key[(headers[H_CONSUMER], int(headers[H_OFFSET]))] = (headers, record.value)
        for item in records:
            for group in groups:
                found = by_key.get((group, item.offset))
                if item.expect == DLQ and found is None:
                    problems.append(f"{topic} {item.what!r} not dead-lettered by {group}")
                elif item.expect == IGNORED and found is not None:
                    problems.append(f"{topic} {item.what!r} dead-lettered by {group}: {found[0][H_REASON]}")
                elif found is not None:
                    headers, value = found
                    if not headers.get(H_REASON):
                        problems.append(f"{topic} {item.what!r}: no reason")
                    if value != (item.value or b""):
                        problems.append(f"{topic} {item.what!r}: the DLQ changed the bytes")
    assert not problems, "\n".join(problems[:30])
    for service in trio.by_name().values():
        assert service.runtime.started  # nobody crashed
