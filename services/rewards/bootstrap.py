"""The one place where the rewards service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from functools import partial
from typing import Any

import structlog
from fastapi import FastAPI

from services.rewards import handlers
from services.rewards.adapters.funnel import FUNNEL_INDEXES, FunnelStore
from services.rewards.adapters.publishing import OutboxBatcher
from services.rewards.adapters.store import (
    INDEXES,
    OUTBOX_COLLECTIONS,
    BudgetStore,
    CouponStore,
    LedgerStore,
    RefusalStore,
)
from services.rewards.domain.funnel import FUNNEL_EVENT_TYPES
from services.rewards.entrypoints import api, consumers, live
from services.rewards.settings import RewardsSettings
from shared.clock import Clock, SystemClock
from shared.events import catalog
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)


def build_app(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings if isinstance(settings, RewardsSettings) else RewardsSettings()
    runtime = ServiceRuntime(settings, indexes=[*INDEXES, *FUNNEL_INDEXES], outbox_collections=OUTBOX_COLLECTIONS)
    db = runtime.db
    funnel = FunnelStore(db)
    publisher = OutboxBatcher(runtime.broker, runtime.outbox, settings, enabled=settings.outbox_batching)
    deps = handlers.Deps(
        coupons=CouponStore(db), ledger=LedgerStore(db), budgets=BudgetStore(db), refusals=RefusalStore(db),
        publisher=publisher, clock=clock or SystemClock(), rules=settings.rule_config(),
        budget_config=list(settings.budgets), reservation_ttl=settings.reservation_ttl,
        min_withdrawal=settings.min_withdrawal, source=runtime.source,
    )
    referral_handlers = {
        "referral.bound": partial(consumers.on_referral_bound, deps=deps),
        "referral.qualified": partial(consumers.on_referral_qualified, deps=deps),
        "referral.disqualified": partial(consumers.on_referral_disqualified, deps=deps),
    }
    groupbuy_handlers = {"groupbuy.group_formed": partial(consumers.on_group_formed, deps=deps)}
    # several events of a type from different keys at once (shared.kafka.process_batch): the bulk
    # of the traffic, where one insert per poll instead of one per event is most of the speed
    rewarding = partial(consumers.on_rewarding_events, deps=deps)
    for topic, by_type in ((catalog.REFERRAL, referral_handlers), (catalog.GROUPBUY, groupbuy_handlers)):
        # disqualifications are rare and revoke one referral's rewards: no batch form, one at a time
        per_event_only = {"referral.disqualified"}
        batch_handlers = {t: rewarding for t in by_type if t not in per_event_only}
        runtime.consume(topic, _with_funnel(by_type, funnel, topic),
                        _with_funnel(batch_handlers, funnel, topic, batch=True, leave=per_event_only))
    runtime.consume(catalog.ORDERS, {
        "order.completed": partial(consumers.on_order_completed, deps=deps, db=db),
        "order.refunded": partial(consumers.on_order_refunded, deps=deps),
    }, {"order.completed": partial(consumers.on_orders_completed, deps=deps, db=db)})

    async def reservation_sweeper() -> None:
        while True:
            released = await handlers.release_lapsed_reservations(deps)
            if released:
                log.info("lapsed coupon reservations released", count=released)
            await asyncio.sleep(settings.reservation_sweep_seconds)

    async def publish_marks_expiry() -> None:
        while True:
            expired = await publisher.marks.expire(settings.publish_marks_retention)
            if expired:
                log.info("publish marks expired", count=expired)
            await asyncio.sleep(3600)

    runtime.add_loop("reservation-sweeper", reservation_sweeper)
    runtime.add_loop("publish-marks-expiry", publish_marks_expiry)
    runtime.add_loop("outbox-batcher", publisher.run)
    app = create_app(
        runtime, [api.router, live.router],
        title="pinwheel rewards",
        description=(
            "Coupons and commissions issued exactly once in effect, redemption, commission ledger and "
            "withdrawals. Rewards come from `referral.events`, `groupbuy.events` and `orders.events`; "
            "every change is announced on `rewards.events`."
        ),
        openapi_tags=[
            {"name": "coupons", "description": "the caller's coupons; checkout reservations (service scope)"},
            {"name": "commissions", "description": "commission ledger, balances and withdrawals"},
            {"name": "operators", "description": "admin scope"},
        ],
    )
    app.state.rewards_deps = deps
    app.state.funnel = funnel
    return app


def _with_funnel(handlers_by_type: Mapping[str, Any], funnel: FunnelStore, topic: str, *,
                 batch: bool = False, leave: Collection[str] = ()) -> dict[str, Any]:
    """The topic's rewarding handlers (per event, or batch handlers with ``batch``), each also
    counting its events for the live funnel, plus a count-only handler for the funnel's other
    event types on the topic except ``leave`` (types handled per event only)."""
    count = consumers.counted_many if batch else consumers.counted
    count_only = consumers.on_funnel_events if batch else consumers.on_funnel_event
    wired: dict[str, Any] = {event_type: count(handler, funnel) for event_type, handler in handlers_by_type.items()}
    for event_type in FUNNEL_EVENT_TYPES:
        if catalog.EVENTS[event_type].topic == topic and event_type not in wired and event_type not in leave:
            wired[event_type] = partial(count_only, funnel=funnel)
    return wired
