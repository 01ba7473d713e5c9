"""The one place where the groupbuy service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from fastapi import FastAPI

from services.groupbuy.adapters.store import INDEXES, OUTBOX_COLLECTIONS, GroupbuyStore
from services.groupbuy.entrypoints import consumers
from services.groupbuy.entrypoints.api import build_router
from services.groupbuy.handlers import Groupbuy
from services.groupbuy.settings import GroupbuySettings
from shared.clock import Clock, SystemClock
from shared.events import catalog
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)


def build_app(settings: ServiceSettings | None = None, clock: Clock | None = None) -> FastAPI:
    """``clock`` lets tests move time (deadlines, payment windows) without sleeping; the scheduler pass
    is ``app.state.groupbuy.run_due()`` for tests that drive it directly."""
    settings = settings if isinstance(settings, GroupbuySettings) else GroupbuySettings(
        **(settings.model_dump() if settings else {}))
    runtime = ServiceRuntime(settings, indexes=INDEXES, outbox_collections=OUTBOX_COLLECTIONS)
    groupbuy = Groupbuy(GroupbuyStore(runtime.db), runtime.outbox, clock or SystemClock(), settings, runtime.source)
    runtime.consume(catalog.ORDERS, {
        "order.completed": partial(consumers.on_order_completed, db=runtime.db, groupbuy=groupbuy)})
    if settings.scheduler_enabled:
        runtime.add_loop("groupbuy-scheduler", partial(scheduler_loop, groupbuy, settings.scheduler_interval_seconds))
    app = create_app(
        runtime, [build_router(groupbuy)],
        title="pinwheel groupbuy",
        description=(
            "Group buying (拼团): campaigns with size tiers, groups, seat p"
            "ayment windows, formation or failure."
        ),
        openapi_tags=[{"name": "operators", "description": "campaigns (scope `admin`)"},
                      {"name": "groups", "description": "open, join and watch groups"}],
    )
    app.state.groupbuy = groupbuy
    return app


async def scheduler_loop(groupbuy: Groupbuy, interval: float) -> None:
    """Enforce payment windows and deadlines; every replica may run it (decisions are unique inserts)."""
    while True:
        try:
            done = await groupbuy.run_due()
            if any(done.values()):
                log.info("groupbuy scheduler pass", **done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("groupbuy scheduler pass failed", error=repr(exc)[:300])
        await asyncio.sleep(interval)
