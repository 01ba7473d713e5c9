"""Helpers of the security suite (tests/security): the three services in one process, the error shape."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from services.groupbuy.bootstrap import build_app as build_groupbuy
from services.groupbuy.settings import GroupbuySettings
from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from services.rewards.bootstrap import build_app as build_rewards
from services.rewards.settings import RewardsSettings
from tests.support.services import RunningService, running, settings_for


@dataclass
class Trio:
    """The three services in this process (one namespace: events flow between them)."""

    namespace: str
    referral: RunningService
    groupbuy: RunningService
    rewards: RunningService

    def by_name(self) -> dict[str, RunningService]:
        return {"referral": self.referral, "groupbuy": self.groupbuy, "rewards": self.rewards}


@contextlib.asynccontextmanager
async def running_trio(infra: Any, namespace: str, **overrides: dict[str, Any]) -> AsyncIterator[Trio]:
    async with contextlib.AsyncExitStack() as stack:
        referral = await stack.enter_async_context(running(build_referral, settings_for(
            ReferralSettings, infra, namespace, **overrides.get("referral", {}))))
        groupbuy = await stack.enter_async_context(running(build_groupbuy, settings_for(
            GroupbuySettings, infra, namespace, scheduler_enabled=False, **overrides.get("groupbuy", {}))))
        rewards = await stack.enter_async_context(running(build_rewards, settings_for(
            RewardsSettings, infra, namespace, **overrides.get("rewards", {}))))
        yield Trio(namespace, referral, groupbuy, rewards)


def assert_error_shape(response: Any, status: int | None = None) -> dict[str, Any]:
    """The contract's error body: {"error": {"code", "message", "details"}}."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"code", "message"} <= set(error) <= {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str), body
    return dict(error)


OPERATIONS_PATHS = {"/healthz", "/readyz", "/metrics", "/asyncapi.json"}
# Static pages without data (their data comes from authenticated endpoints): public on purpose.
PUBLIC_PAGES = {"/live"}


def api_operations(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (METHOD, path template, operation) of an app's OpenAPI except health/metrics/AsyncAPI:
    new endpoints are covered without touching the tests."""
    found = []
    for path, item in app.openapi()["paths"].items():
        if path in OPERATIONS_PATHS or path in PUBLIC_PAGES:
            continue
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                found.append((method.upper(), path, operation))
    return found


def fill_path(template: str, value: str = "x-1") -> str:
    return re.sub(r"\{[^}]+\}", value, template)


def required_scope(path: str, operation: dict[str, Any]) -> str:
    """The scope an operation needs: `admin` for operator endpoints, `service` for checkout."""
    tags = set(operation.get("tags", []))
    if tags & {"operator", "operators"}:
        return "admin"
    if "/redemptions" in path:
        return "service"
    return ""
