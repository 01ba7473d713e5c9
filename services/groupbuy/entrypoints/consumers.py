"""Kafka subscribers of the groupbuy service: typed handlers, one per event type."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.groupbuy.handlers import Groupbuy
from shared.events import CloudEvent
from shared.events.schemas import OrderCompleted
from shared.inbox import remember_event
from shared.mongo import Document


async def on_order_completed(event: CloudEvent[OrderCompleted], db: AsyncDatabase[Document],
                             groupbuy: Groupbuy) -> None:
    """Every completed order marks its buyer (new-users-only campaigns); one naming a group pays the
    buyer's seat, or is rejected for refund. Idempotent: every effect is a unique-key insert."""
    await remember_event(db, event)
    await groupbuy.on_order_completed(event)
