"""The one place where the rewards service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.rewards.entrypoints import consumers
from services.rewards.settings import RewardsSettings
from shared.events import catalog
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or RewardsSettings()
    runtime = ServiceRuntime(settings)
    runtime.consume(catalog.ORDERS, {"order.completed": partial(consumers.on_order_completed, db=runtime.db)})
    return create_app(
        runtime, [],
        title="pinwheel rewards",
        description=(
            "Coupons and commissions issued exactly once in effect, redem"
            "ption, commission ledger and withdrawals."
        ),
    )
