"""The one place where the referral service is wired: settings, store, broker, consumers, routes."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.referral.entrypoints import consumers
from services.referral.settings import ReferralSettings
from shared.events import catalog
from shared.runtime import ServiceRuntime, create_app
from shared.settings import ServiceSettings


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ReferralSettings()
    runtime = ServiceRuntime(settings)
    runtime.consume(catalog.USERS, {"user.registered": partial(consumers.on_user_registered, db=runtime.db)})
    return create_app(
        runtime, [],
        title="pinwheel referral",
        description=(
            "Referral codes, binding invitees to inviters, qualification "
            "on first order, milestones and fraud review."
        ),
    )
