"""Dead letters: list them with their reasons, show one, redrive selected ones to the original topic.

A redriven record is the original bytes and key, so the event keeps its id and consumers dedupe it
if it had been applied after all; the DLQ headers are dropped and ``dlq-redriven-from`` added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.events.catalog import DLQ_SUFFIX
from shared.kafka import H_CONSUMER, H_ERROR, H_FAILED_AT, H_REASON, H_TOPIC, read_topic

DLQ_HEADER_PREFIX = "dlq-"
REDRIVEN_FROM = "dlq-redriven-from"


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def reason(self) -> str:
        return self.header(H_REASON) or "unknown"

    @property
    def original_topic(self) -> str:
        return self.header(H_TOPIC) or self.topic.removesuffix(DLQ_SUFFIX)

    def event_summary(self) -> dict[str, Any]:
        try:
            document = json.loads(self.value)
        except ValueError:
            return {}
        if not isinstance(document, dict):
            return {}
        return {"id": document.get("id"), "type": document.get("type")}

    def as_dict(self, with_value: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ref": self.ref, "reason": self.reason, "error": self.header(H_ERROR),
            "failed_at": self.header(H_FAILED_AT), "original_topic": self.original_topic,
            "consumer_group": self.header(H_CONSUMER),
            "key": self.key.decode(errors="replace") if self.key else None, **self.event_summary(),
        }
        if with_value:
            out["headers"] = {k: v.decode(errors="replace") for k, v in self.headers}
            out["value"] = self.value.decode(errors="replace")
        return out


def dlq_name(topic: str) -> str:
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


async def read_all(bootstrap_servers: str, topic: str) -> list[DeadLetter]:
    """Every record now in the DLQ topic, oldest first per partition."""
    return [DeadLetter(r.topic, r.partition, r.offset, r.key, r.value or b"", tuple(r.headers or ()))
            for r in await read_topic(bootstrap_servers, dlq_name(topic))]


def select(letters: list[DeadLetter], refs: list[str] | None = None, reason: str | None = None,
           everything: bool = False) -> list[DeadLetter]:
    if everything:
        return letters
    chosen = [letter for letter in letters
              if (refs and letter.ref in refs) or (reason is not None and letter.reason == reason)]
    return chosen


async def redrive(bootstrap_servers: str, letters: list[DeadLetter]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for letter in letters:
            headers = [(k, v) for k, v in letter.headers if not k.startswith(DLQ_HEADER_PREFIX)]
            headers.append((REDRIVEN_FROM, f"{letter.topic}:{letter.ref}".encode()))
            await producer.send_and_wait(letter.original_topic, letter.value, key=letter.key, headers=headers)
    finally:
        await producer.stop()
    return len(letters)
