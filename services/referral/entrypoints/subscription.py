"""One Kafka subscriber for all the topics the referral service consumes.

``ServiceRuntime.consume`` makes one consumer per topic, all in the service's consumer group. Two
consumers in one group join it one after the other, so after a restart one topic is already being
consumed while the group is still rebalancing for the other (and every join of one triggers a
rebalance of both). One consumer subscribed to both topics joins once. Records keep the semantics
of ``shared.kafka``: the typed ``EventConsumer`` of the record's topic handles it (DLQ, retries,
metrics), and the offset is committed only after it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage

from shared.kafka import EventConsumer, EventHandler
from shared.runtime import ServiceRuntime


def consume_together(runtime: ServiceRuntime, handlers_by_topic: Mapping[str, Mapping[str, EventHandler]]) -> None:
    settings = runtime.settings
    consumers = {
        settings.topic(topic): EventConsumer(settings, topic, handlers, runtime.dead_letters)
        for topic, handlers in handlers_by_topic.items()
    }
    types = ", ".join(sorted(t for c in consumers.values() for t in c.handlers))
    subscriber = runtime.broker.subscriber(
        *consumers,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=f"{settings.service_name}:{'+'.join(handlers_by_topic)}",
        description=f"CloudEvents on {', '.join(handlers_by_topic)} handled by {settings.service_name}: {types}",
    )

    @subscriber
    async def on_record(message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)
        try:
            await consumers[record.topic].process(record)
        except Exception:
            # Transient: back off a little so a store outage is not a hot loop of redeliveries.
            await asyncio.sleep(min(5.0, settings.consumer_retry_backoff_seconds * 10))
            raise

    runtime.consumers.extend(consumers.values())
