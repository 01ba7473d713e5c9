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
from shared.inbox import remember_event
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


async def on_order_refunded(event: CloudEvent[s.OrderRefunded], deps: Deps) -> None:
    await handlers.on_order_refunded(event, deps)


# ------------------------------------------------------------------ the funnel projection (/live)


async def on_funnel_event(event: CloudEvent[Any], funnel: FunnelStore) -> None:
    """A referral or group-buy event that grants nothing here: only counted for the live funnel
    (once per event id)."""
    await funnel.record(event)


def counted(handler: Callable[[CloudEvent[Any]], Awaitable[None]],
            funnel: FunnelStore) -> Callable[[CloudEvent[Any]], Awaitable[None]]:
    """``handler`` unchanged, and the event counted for the funnel beside it (concurrently: the
    count is a fact about the referral/group-buy event, not about what rewards made of it, and
    running both at once keeps the handler's latency as it was)."""

    async def handle_and_count(event: CloudEvent[Any]) -> None:
        await asyncio.gather(handler(event), funnel.record(event))

    return handle_and_count
