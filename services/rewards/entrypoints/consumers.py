"""Kafka subscribers of the rewards service: typed handlers, one per event type.

Each is idempotent by the unique keys its use case inserts: duplicates, redeliveries and full
replays change nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.rewards import handlers
from services.rewards.adapters.funnel import FunnelStore
from services.rewards.handlers import Deps
from shared.events import CloudEvent
from shared.events import schemas as s
from shared.inbox import remember_event, remember_events
from shared.kafka import event_log_context
from shared.mongo import Document


async def on_referral_bound(event: CloudEvent[s.ReferralBound], deps: Deps) -> None:
    await handlers.on_rewarding_event(event, deps)


async def on_referral_qualified(event: CloudEvent[s.ReferralQualified], deps: Deps) -> None:
    await handlers.on_rewarding_event(event, deps)


async def on_referral_disqualified(event: CloudEvent[s.ReferralDisqualified], deps: Deps) -> None:
    await handlers.on_referral_disqualified(event, deps)


async def on_group_formed(event: CloudEvent[s.GroupFormed], deps: Deps) -> None:
    await handlers.on_rewarding_event(event, deps)


async def on_order_completed(event: CloudEvent[Any], deps: Deps, db: AsyncDatabase[Document]) -> None:
    # the inbox is a record for operators (redelivery counts), not the gate: effects have their own keys
    await remember_event(db, event)
    if event.data.coupon_codes:
        await handlers.on_order_completed(event, deps)


async def on_orders_completed(events: list[CloudEvent[Any]], deps: Deps, db: AsyncDatabase[Document]) -> None:
    """``on_order_completed`` for a poll's worth (different keys): one inbox insert for all; the
    orders that used coupons are then handled one by one, each in its own log context."""
    await remember_events(db, events)

    async def redeem(event: CloudEvent[Any]) -> None:
        with event_log_context(event):
            await handlers.on_order_completed(event, deps)

    await asyncio.gather(*(redeem(event) for event in events if event.data.coupon_codes))


async def on_rewarding_events(events: list[CloudEvent[Any]], deps: Deps) -> None:
    """Referral and group-buy events that grant rewards, several at once: one pass, one insert."""
    await handlers.on_rewarding_events(events, deps)


async def on_order_refunded(event: CloudEvent[s.OrderRefunded], deps: Deps) -> None:
    await handlers.on_order_refunded(event, deps)


# ------------------------------------------------------------------ the funnel projection (/live)


async def on_funnel_event(event: CloudEvent[Any], funnel: FunnelStore) -> None:
    """A referral or group-buy event that grants nothing here: only counted for the live funnel
    (once per event id)."""
    await funnel.record(event)


async def on_funnel_events(events: list[CloudEvent[Any]], funnel: FunnelStore) -> None:
    await funnel.record_many(events)


def counted(handler: Callable[[CloudEvent[Any]], Awaitable[None]],
            funnel: FunnelStore) -> Callable[[CloudEvent[Any]], Awaitable[None]]:
    """``handler`` unchanged, and the event counted for the funnel beside it (concurrently: the
    count is a fact about the referral/group-buy event, not about what rewards made of it, and
    running both at once keeps the handler's latency as it was)."""

    async def handle_and_count(event: CloudEvent[Any]) -> None:
        await asyncio.gather(handler(event), funnel.record(event))

    return handle_and_count


def counted_many(handler: Callable[[list[CloudEvent[Any]]], Awaitable[None]],
                 funnel: FunnelStore) -> Callable[[list[CloudEvent[Any]]], Awaitable[None]]:
    """``counted`` for a batch handler: one funnel insert for the batch."""

    async def handle_and_count(events: list[CloudEvent[Any]]) -> None:
        await asyncio.gather(handler(events), funnel.record_many(events))

    return handle_and_count
