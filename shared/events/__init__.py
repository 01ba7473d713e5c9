"""Event envelope, schemas and catalog."""

from shared.events.catalog import EVENTS, TOPICS, EventSpec, dlq_topic
from shared.events.envelope import CloudEvent, EventData, RawCloudEvent, UtcDatetime, new_event_id, utcnow

__all__ = ["EVENTS", "TOPICS", "CloudEvent", "EventData", "EventSpec", "RawCloudEvent", "UtcDatetime",
           "dlq_topic", "new_event_id", "utcnow"]
