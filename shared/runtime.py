"""One service process: FastAPI routes and FastStream subscribers together.

The FastStream broker runs inside FastAPI's lifespan (what FastStream's FastAPI integration does;
that integration is deprecated in FastStream 0.7 and moved to a separate package), so one process
serves HTTP, consumes Kafka and runs its background loops (outbox relay, schedulers). Each service's
``bootstrap`` builds a ``ServiceRuntime``, registers its consumers, routes and loops, then calls
``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared import idempotency, inbox, metrics
from shared.auth import JwtVerifier
from shared.dryrun import DryRunDatabase
from shared.errors import ERROR_RESPONSES
from shared.events.catalog import TOPICS
from shared.events.docs import document_payloads, published_topics
from shared.http import RequestContextMiddleware, install_error_handlers, install_health_routes
from shared.kafka import (
    DeadLetters,
    EventBatchHandler,
    EventConsumer,
    EventHandler,
    EventPublisher,
    RecentEvents,
    make_broker,
    register_consumers,
)
from shared.mongo import Document, Indexes, ensure_indexes, make_client, ping
from shared.outbox import OutboxRelay, outbox_indexes
from shared.settings import ServiceSettings

log = structlog.stdlib.get_logger(__name__)

BackgroundLoop = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        indexes: Sequence[Indexes] = (),
        outbox_collections: Sequence[str] = (),
        broker: KafkaBroker | None = None,
    ) -> None:
        self.settings = settings
        self.service = settings.service_name
        self.source = f"urn:pinwheel:{self.service}"
        self.mongo = make_client(settings)
        self.db: Any = self.mongo[settings.mongodb_database]
        if settings.dry_run:
            self.db = DryRunDatabase(self.db)
        self.broker = broker or make_broker(settings)
        self.publisher = EventPublisher(self.broker, settings)
        self.dead_letters = DeadLetters(self.broker, settings)
        self.outbox = OutboxRelay(self.db, outbox_collections, self.publisher, self.service,
                                  poll_seconds=settings.outbox_poll_seconds)
        self.idempotency = idempotency.IdempotencyStore(self.db)
        self.indexes: list[Indexes] = [*indexes, *outbox_indexes(outbox_collections), *idempotency.INDEXES,
                                      *inbox.INDEXES]
        self.loops: list[tuple[str, BackgroundLoop]] = []
        if outbox_collections:
            self.loops.append(("outbox-relay", self.outbox.run))
        self.loops.append(("consumer-lag", self._report_lag))
        self.consumers: list[EventConsumer] = []
        self.recent_events = RecentEvents(settings.consumer_recent_event_ids)
        self._subscribed = False
        self._startup: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        for topic in published_topics(self.service):
            types = ", ".join(spec.type for spec in TOPICS[topic])
            self.broker.publisher(settings.topic(topic), title=f"{self.service}:{topic}:publish",
                                  description=f"CloudEvents published by {self.service}: {types}")

    def consume(self, topic: str, handlers: Mapping[str, EventHandler],
                batch_handlers: Mapping[str, EventBatchHandler] | None = None) -> EventConsumer:
        """Handle ``topic``'s event types; every topic of the service shares one subscriber.
        ``batch_handlers`` take several events of a type at once (see ``EventConsumer``)."""
        if self._subscribed:
            raise RuntimeError("consume() after the subscriber was registered")
        consumer = EventConsumer(self.settings, topic, handlers, self.dead_letters, batch_handlers,
                                 recent=self.recent_events, on_duplicates=self._record_redeliveries)
        self.consumers.append(consumer)
        return consumer

    async def _record_redeliveries(self, event_ids: list[str]) -> None:
        await inbox.record_redeliveries(self.db, event_ids)

    def subscribe(self) -> None:
        """Register the one Kafka subscriber for all consumed topics (done by ``create_app``)."""
        if self.consumers and not self._subscribed:
            register_consumers(self.broker, self.settings, self.consumers)
        self._subscribed = True

    def add_loop(self, name: str, loop: BackgroundLoop) -> None:
        self.loops.append((name, loop))

    async def _retry(self, what: str, action: Callable[[], Awaitable[Any]],
                     reset: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Until it works: a dependency that is down at startup is waited for, not fatal."""
        delay = 0.5
        while True:
            try:
                await action()
                return
            except Exception as exc:
                log.warning(f"{what} failed, retrying", error=repr(exc)[:300], retry_in=delay)
                if reset is not None:
                    with contextlib.suppress(Exception):
                        await reset()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def start(self, wait: bool = True) -> None:
        """Connect to the store and Kafka, then run the consumers and loops. With ``wait=False``
        (the HTTP process) this happens in the background: the API serves at once, ``/healthz``
        is green and ``/readyz`` stays red until both dependencies are reached."""
        self._startup = asyncio.create_task(self._start_when_reachable(), name="startup")
        if wait:
            await self._startup

    async def _start_when_reachable(self) -> None:
        await self._retry("creating indexes", lambda: ensure_indexes(self.db, self.indexes))
        await self._retry("starting the Kafka broker", self.broker.start, reset=self.broker.stop)
        for name, loop in self.loops:
            self._tasks.append(asyncio.create_task(self._supervise(name, loop), name=name))
        self.started = True
        log.info("service started", consumers=[c.topic for c in self.consumers],
                 loops=[name for name, _ in self.loops])

    async def _supervise(self, name: str, loop: BackgroundLoop) -> None:
        """Background loops restart after a crash instead of silently dying."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background loop crashed; restarting", loop=name)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._startup
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        await self.mongo.close()
        self.started = False

    async def _report_lag(self, every_seconds: float = 5.0) -> None:
        """Consumer lag per assigned partition (end offset minus position) for /metrics."""
        while True:
            await asyncio.sleep(every_seconds)
            for subscriber in self.broker.subscribers:
                consumer = getattr(subscriber, "consumer", None)
                if consumer is None:
                    continue
                for tp in consumer.assignment():
                    highwater = consumer.highwater(tp)
                    if highwater is None:
                        continue
                    try:
                        position = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
                    except Exception:  # reassigned during a rebalance, or not fetched yet
                        continue
                    topic = tp.topic.removeprefix(self.settings.topic_prefix)
                    metrics.CONSUMER_LAG.labels(self.service, topic, str(tp.partition)).set(
                        max(0, highwater - position))

    async def mongo_ready(self) -> bool:
        # Bounded: a probe must answer "not ready" quickly, not hang for server selection.
        try:
            return await asyncio.wait_for(ping(self.mongo), timeout=1.5)
        except TimeoutError:
            return False

    async def kafka_ready(self) -> bool:
        if not self.started:
            return False
        try:
            return bool(await asyncio.wait_for(self.broker.ping(timeout=1.0), timeout=1.5))
        except Exception:
            return False

    def asyncapi(self) -> dict[str, Any]:
        """FastStream's AsyncAPI document of this service, with each channel's CloudEvents
        payload schema and record key from the event catalog (the subscriber takes raw records so
        that unparseable ones reach the DLQ, which leaves FastStream without a payload type)."""
        spec = AsyncAPI(self.broker, title=f"pinwheel {self.service}", version="1.0.0",
                        description=f"Kafka topics consumed and published by the {self.service} service")
        return document_payloads(dict(spec.to_specification().to_jsonable()), self.settings)


def create_app(
    runtime: ServiceRuntime,
    routers: Iterable[APIRouter],
    *,
    title: str,
    description: str,
    openapi_tags: list[dict[str, Any]] | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start(wait=False)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan,
                  openapi_tags=openapi_tags, responses=ERROR_RESPONSES)
    runtime.subscribe()
    app.state.runtime = runtime
    app.state.jwt_verifier = JwtVerifier(runtime.settings)
    app.add_middleware(RequestContextMiddleware, service=runtime.service)
    install_error_handlers(app)
    install_health_routes(app, {"mongodb": runtime.mongo_ready, "kafka": runtime.kafka_ready})

    @app.get("/asyncapi.json", tags=["operations"], summary="AsyncAPI document of this service's topics")
    async def asyncapi() -> JSONResponse:
        return JSONResponse(runtime.asyncapi())

    for router in routers:
        app.include_router(router)
    return app


def runtime_of(app: Any) -> ServiceRuntime:
    runtime: ServiceRuntime = app.state.runtime
    return runtime


Doc = Document
