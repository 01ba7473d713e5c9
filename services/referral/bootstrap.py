"""The one place where the referral service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.referral.adapters.store import INDEXES, OUTBOX_COLLECTIONS, ReferralStore
from services.referral.entrypoints import consumers
from services.referral.entrypoints.api import router
from services.referral.handlers import Clock, Deps
from services.referral.settings import ReferralSettings
from shared.events import catalog
from shared.events.envelope import utcnow
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings


def build_app(settings: ServiceSettings | None = None, clock: Clock = utcnow) -> FastAPI:
    """``clock`` is the domain's "now" (tests pass a settable one); event times come from events."""
    settings = settings or ReferralSettings()
    if not isinstance(settings, ReferralSettings):
        raise TypeError("the referral service needs ReferralSettings")
    runtime = ServiceRuntime(settings, indexes=INDEXES, outbox_collections=OUTBOX_COLLECTIONS)
    deps = Deps(store=ReferralStore(runtime.db), outbox=runtime.outbox, settings=settings,
                source=runtime.source, clock=clock)
    runtime.consume(catalog.USERS, {
        "user.registered": partial(consumers.on_user_registered, db=runtime.db, deps=deps)})
    runtime.consume(catalog.ORDERS, {
        "order.completed": partial(consumers.on_order_completed, deps=deps),
        "order.refunded": partial(consumers.on_order_refunded, deps=deps),
    })
    app = create_app(
        runtime, [router],
        title="pinwheel referral",
        description=(
            "Referral codes, binding invitees to inviters, qualification "
            "on first order, milestones and fraud review."
        ),
        openapi_tags=[
            {"name": "referral", "description": "codes, binding, my invites, leaderboard"},
            {"name": "operator", "description": "fraud review (scope `admin`)"},
        ],
    )
    app.state.referral = deps
    return app
