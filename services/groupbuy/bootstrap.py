"""The one place where the groupbuy service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.groupbuy.entrypoints import consumers
from services.groupbuy.settings import GroupbuySettings
from shared.events import catalog
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or GroupbuySettings()
    runtime = ServiceRuntime(settings)
    runtime.consume(catalog.ORDERS, {"order.completed": partial(consumers.on_order_completed, db=runtime.db)})
    return create_app(
        runtime, [],
        title="pinwheel groupbuy",
        description=(
            "Group buying (拼团): campaigns with size tiers, groups, seat p"
            "ayment windows, formation or failure."
        ),
    )
