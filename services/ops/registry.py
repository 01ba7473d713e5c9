"""The services the ops tools know: how to build each one, read from the environment."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE_NAMES = ("referral", "groupbuy", "rewards")


def settings_for(service: str, **overrides: Any) -> ServiceSettings:
    if service == "referral":
        from services.referral.settings import ReferralSettings

        return ReferralSettings(**overrides)
    if service == "groupbuy":
        from services.groupbuy.settings import GroupbuySettings

        return GroupbuySettings(**overrides)
    if service == "rewards":
        from services.rewards.settings import RewardsSettings

        return RewardsSettings(**overrides)
    raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICE_NAMES)}")


def build(service: str, settings: ServiceSettings) -> FastAPI:
    if service == "referral":
        from services.referral.bootstrap import build_app

        return build_app(settings)
    if service == "groupbuy":
        from services.groupbuy.bootstrap import build_app as build_groupbuy

        return build_groupbuy(settings)
    if service == "rewards":
        from services.rewards.bootstrap import build_app as build_rewards

        return build_rewards(settings)
    raise ValueError(f"unknown service {service!r}")


def runtime_for(service: str, **overrides: Any) -> ServiceRuntime:
    """A service's runtime (consumers, handlers, store), not started: no group join, no loops."""
    app = build(service, settings_for(service, **overrides))
    runtime: ServiceRuntime = app.state.runtime
    return runtime
