"""Kafka subscribers of the groupbuy service: typed handlers, one per event type."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.events import CloudEvent
from shared.inbox import remember_event
from shared.mongo import Document


async def on_order_completed(event: CloudEvent[Any], db: AsyncDatabase[Document]) -> None:
    await remember_event(db, event)
