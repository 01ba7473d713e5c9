"""JSON schemas of each topic's CloudEvents for the AsyncAPI documents."""

from __future__ import annotations

from functools import cache
from typing import Any, Union

from pydantic import TypeAdapter

from shared.events.catalog import TOPICS
from shared.events.envelope import CloudEvent
from shared.settings import ServiceSettings

REF_TEMPLATE = "#/components/schemas/{model}"


def published_topics(service: str) -> list[str]:
    """A service publishes the topic named after it (``referral`` → ``referral.events``)."""
    return [topic for topic in TOPICS if topic.split(".")[0] == service]


@cache
def topic_schema(topic: str) -> dict[str, Any]:
    """``oneOf`` the CloudEvents of every type on ``topic``, definitions under ``$defs``."""
    envelopes = tuple(CloudEvent[spec.data_model] for spec in TOPICS[topic])  # type: ignore[name-defined]
    adapter: TypeAdapter[Any] = TypeAdapter(Union[envelopes])  # type: ignore[arg-type]  # noqa: UP007
    schema = adapter.json_schema(ref_template=REF_TEMPLATE, mode="serialization")
    schema["title"] = f"{topic} CloudEvents"
    schema["description"] = "; ".join(f"{spec.type}: {spec.description}" for spec in TOPICS[topic])
    return schema


def document_payloads(spec: dict[str, Any], settings: ServiceSettings) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    messages = components.get("messages", {})
    for channel in spec.get("channels", {}).values():
        physical = channel.get("bindings", {}).get("kafka", {}).get("topic") or channel.get("address", "")
        topic = physical.removeprefix(settings.topic_prefix)
        if topic not in TOPICS:
            continue
        schema = dict(topic_schema(topic))
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[topic] = schema
        key_field = TOPICS[topic][0].key_field
        for ref in channel.get("messages", {}).values():
            message = messages.get(ref["$ref"].rsplit("/", 1)[-1].replace("%2B", "+"))
            if message is None:
                continue
            message["payload"] = {"$ref": REF_TEMPLATE.format(model=topic)}
            message["contentType"] = "application/cloudevents+json"
            message["bindings"] = {"kafka": {"key": {"type": "string", "description": f"data.{key_field}"},
                                             "bindingVersion": "0.4.0"}}
    for name in [n for n in schemas if n == "EmptyPayload" or n.endswith(":Payload")]:
        del schemas[name]  # FastStream's placeholders for the raw-record handler, replaced above
    return spec
