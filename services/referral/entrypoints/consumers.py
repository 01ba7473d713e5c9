"""Kafka subscribers of the referral service: typed handlers, one per event type."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.referral import handlers
from services.referral.handlers import Deps
from shared.events import CloudEvent
from shared.events import schemas as s
from shared.inbox import remember_event
from shared.mongo import Document


async def on_user_registered(event: CloudEvent[s.UserRegistered], db: AsyncDatabase[Document], deps: Deps) -> None:
    # The inbox record first: operators (and the crash test) see every delivery and redelivery.
    # It is not a gate: a redelivery still runs the use case, which finishes anything a crash left.
    await remember_event(db, event)
    await handlers.on_registered(deps, event)


async def on_order_completed(event: CloudEvent[s.OrderCompleted], deps: Deps) -> None:
    await handlers.on_order_completed(deps, event)


async def on_order_refunded(event: CloudEvent[s.OrderRefunded], deps: Deps) -> None:
    await handlers.on_order_refunded(deps, event)
