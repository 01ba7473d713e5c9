"""Consumer lag per service, topic and partition: end offset minus the group's committed offset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.ops.registry import SERVICE_NAMES, runtime_for
from shared.kafka import topic_partitions


@dataclass(frozen=True)
class PartitionLag:
    service: str
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def consumer_lag(services: tuple[str, ...] = SERVICE_NAMES,
                       overrides: dict[str, dict[str, Any]] | None = None) -> list[PartitionLag]:
    """``overrides``: per service, settings that differ from the environment (tests)."""
    rows: list[PartitionLag] = []
    for service in services:
        runtime = runtime_for(service, **(overrides or {}).get(service, {}))
        settings = runtime.settings
        topics = [settings.topic(c.topic) for c in runtime.consumers]
        await runtime.mongo.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                    group_id=settings.consumer_group, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await topic_partitions(consumer, topics)
            ends = await consumer.end_offsets(partitions) if partitions else {}
            for tp in partitions:
                committed = await consumer.committed(tp)
                rows.append(PartitionLag(service, settings.consumer_group, tp.topic, tp.partition, committed, ends[tp]))
        finally:
            await consumer.stop()
    return rows
