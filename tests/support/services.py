"""Run a service in-process against the real servers, isolated by topic prefix, database and
consumer group, and talk to it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from shared.auth import issue_token
from shared.runtime import ServiceRuntime
from shared.settings import LOCAL_DEV_JWT_SECRET, ServiceSettings

T = TypeVar("T")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def settings_for(settings_cls: type[ServiceSettings], infra: Any, namespace: str, **overrides: Any) -> Any:
    """Settings for an isolated copy of a service: own topics, database and consumer group."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": infra.bootstrap_servers,
        "mongodb_uri": infra.mongodb_uri,
        "topic_prefix": f"{namespace}.",
        "mongodb_database": f"{namespace}_{settings_cls.service_name}",
        "consumer_group": f"{namespace}-{settings_cls.service_name}",
        "environment": "test",
        "outbox_poll_seconds": 0.2,
        "consumer_retry_backoff_seconds": 0.05,
        "jwt_secret": LOCAL_DEV_JWT_SECRET,
    }
    values.update(overrides)
    return settings_cls(**values)


def token(sub: str, scopes: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(LOCAL_DEV_JWT_SECRET, sub, scopes)}"}


class RunningService:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.runtime: ServiceRuntime = app.state.runtime

    @property
    def db(self) -> Any:
        return self.runtime.db


@contextlib.asynccontextmanager
async def running(build_app: Callable[[Any], FastAPI], settings: Any) -> AsyncIterator[RunningService]:
    app = build_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            service = RunningService(app, client)
            await wait_consumers_assigned(service.runtime)
            yield service


async def wait_consumers_assigned(runtime: ServiceRuntime, timeout: float = 60) -> None:
    """Wait until every subscriber of the service has partitions assigned (the group has joined)."""
    deadline = time.monotonic() + timeout
    subscribers = list(runtime.broker.subscribers)
    while time.monotonic() < deadline:
        consumers = [getattr(s, "consumer", None) for s in subscribers]
        if all(c is not None and c.assignment() for c in consumers):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("consumers were not assigned partitions in time")


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 30, interval: float = 0.1,
                     message: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{message} not reached in {timeout}s; last value: {last!r}")


async def redelivered(db: Any, event_id: str, times: int) -> bool:
    """The event came again exactly ``times`` times after its first delivery (for ``eventually``)."""
    from shared.inbox import redeliveries

    return await redeliveries(db, event_id) == times
