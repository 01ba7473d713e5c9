"""The code, the generated AsyncAPI and OpenAPI documents agree with ../shared/CONTRACT.md."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from services.groupbuy.bootstrap import build_app as build_groupbuy
from services.referral.bootstrap import build_app as build_referral
from services.rewards.bootstrap import build_app as build_rewards
from shared.events.catalog import EVENTS, TOPICS

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"
BUILDERS = {"referral": build_referral, "groupbuy": build_groupbuy, "rewards": build_rewards}
CONSUMES = {"referral": {"users.events", "orders.events"}, "groupbuy": {"orders.events"},
            "rewards": {"referral.events", "groupbuy.events", "orders.events"}}


@pytest.fixture(scope="module")
def contract() -> str:
    assert CONTRACT.exists(), f"the contract is read from {CONTRACT} (the brief folder beside the repo)"
    return CONTRACT.read_text()


def event_rows(contract: str) -> dict[str, tuple[str, set[str]]]:
    """topic -> (key description, event types) from the contract's inbound and outbound tables."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in contract.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`") or not cells[0].endswith(".events`"):
            continue
        topic = cells[0].strip("`")
        key = cells[1].replace("`", "")
        types = set(re.findall(r"`([a-z]+\.[a-z_]+)`", cells[2]))
        previous = rows.get(topic, (key, set()))
        rows[topic] = (key, previous[1] | types)
    return rows


def rest_operations(contract: str) -> dict[str, set[tuple[str, str]]]:
    section = contract.split("## REST for mobile apps and operators", 1)[1].split("## Business rules", 1)[0]
    operations: dict[str, set[tuple[str, str]]] = {}
    service = None
    for line in section.splitlines():
        heading = re.match(r"\*\*(referral|groupbuy|rewards)\*\*", line.strip())
        if heading:
            service = heading.group(1)
            continue
        if service:
            for method, path in re.findall(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`\s?]+)", line):
                operations.setdefault(service, set()).add((method, path))
    return operations


def test_every_contract_topic_key_and_type_is_in_the_catalog(contract):
    rows = event_rows(contract)
    assert set(rows) == set(TOPICS)
    for topic, (key, types) in rows.items():
        assert {spec.type for spec in TOPICS[topic]} == types, topic
        key_field = TOPICS[topic][0].key_field
        assert key_field.split("_")[0] in key.replace("buyer ", "").replace("beneficiary ", ""), (topic, key)


@pytest.mark.parametrize("service", list(BUILDERS))
def test_asyncapi_documents_consumed_and_published_topics_with_types_and_keys(service):
    spec = BUILDERS[service]().state.runtime.asyncapi()
    schemas = spec["components"]["schemas"]
    by_topic: dict[str, set[str]] = {}
    for name, channel in spec["channels"].items():
        operation = next(op for op in spec["operations"].values()
                         if unquote(op["channel"]["$ref"]).endswith("/" + name))
        by_topic.setdefault(channel["address"], set()).add(operation["action"])
    assert {t for t, actions in by_topic.items() if "receive" in actions} == CONSUMES[service]
    assert {t for t, actions in by_topic.items() if "send" in actions} == {f"{service}.events"}
    for topic in by_topic:
        documented = schemas[topic]
        for spec_ in TOPICS[topic]:
            assert spec_.type in documented["description"]
            assert spec_.data_model.__name__ in schemas
    for message in spec["components"]["messages"].values():
        topic = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert message["bindings"]["kafka"]["key"]["description"] == f"data.{TOPICS[topic][0].key_field}"


def test_openapi_serves_every_rest_operation_of_the_contract(contract):
    for service, operations in rest_operations(contract).items():
        paths = BUILDERS[service]().openapi()["paths"]
        for method, path in operations:
            assert path in paths, (service, path)
            assert method.lower() in paths[path], (service, method, path)
    assert len(rest_operations(contract)) == 3


@pytest.mark.parametrize("service", list(BUILDERS))
def test_every_service_serves_health_readiness_metrics_and_docs(service):
    paths = BUILDERS[service]().openapi()["paths"]
    assert {"/healthz", "/readyz", "/metrics", "/asyncapi.json"} <= set(paths)


def test_every_event_type_has_an_example_free_schema_that_requires_the_contract_fields():
    required = {"user.registered": {"user_id", "registered_at"},
                "order.completed": {"order_id", "user_id", "amount", "currency", "completed_at"},
                "order.refunded": {"order_id", "user_id", "refunded_amount", "full", "refunded_at"}}
    for event_type, fields in required.items():
        schema = EVENTS[event_type].data_model.model_json_schema()
        assert fields <= set(schema["required"]), event_type
