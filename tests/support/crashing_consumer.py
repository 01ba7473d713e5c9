"""A service process that dies (SIGKILL) right after its handler stored its effect and before the
offset is committed: the worst moment for an at-least-once consumer. With
``PINWHEEL_CRASH_AT=before_publish`` (rewards) it dies earlier: the issued coupon is stored, its
event not yet published, the handler has not returned.

Run as ``python -m tests.support.crashing_consumer <service>`` with the usual env settings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from tests.support.services import wait_consumers_assigned


async def main(service: str) -> None:
    if service == "referral":
        from services.referral.bootstrap import build_app
        from services.referral.settings import ReferralSettings as Settings
    elif service == "groupbuy":
        from services.groupbuy.bootstrap import build_app
        from services.groupbuy.settings import GroupbuySettings as Settings  # type: ignore[assignment]
    else:
        from services.rewards.bootstrap import build_app
        from services.rewards.settings import RewardsSettings as Settings  # type: ignore[assignment]
    app = build_app(Settings())
    runtime = app.state.runtime
    if os.environ.get("PINWHEEL_CRASH_AT") == "before_publish":
        app.state.rewards_deps.publisher._publish = _die
    else:
        for consumer in runtime.consumers:
            for event_type, handler in list(consumer.handlers.items()):
                consumer.handlers[event_type] = _dying_after(handler)
            for event_type, batch_handler in list(consumer.batch_handlers.items()):
                consumer.batch_handlers[event_type] = _dying_after(batch_handler)
    await runtime.start()
    await wait_consumers_assigned(runtime)
    print("CRASHING-CONSUMER-READY", flush=True)
    await asyncio.sleep(120)
    sys.exit("the crashing consumer received no event")


async def _die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _dying_after(handler: Any) -> Any:
    async def wrapped(event_or_events: Any) -> None:
        await handler(event_or_events)
        os.kill(os.getpid(), signal.SIGKILL)

    return wrapped


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))


async def start_crashing(service: str, settings: Any, infra: Any,
                         crash_at: str = "after_handler") -> asyncio.subprocess.Process:
    """Start this module as ``service`` against the test's isolated settings; return once it consumes."""
    prefix = service.upper()
    env = {**os.environ, "PINWHEEL_CRASH_AT": crash_at,
           "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "MONGODB_URI": infra.mongodb_uri,
           "PINWHEEL_TOPIC_PREFIX": settings.topic_prefix, f"{prefix}_MONGODB_DATABASE": settings.mongodb_database,
           f"{prefix}_CONSUMER_GROUP": settings.consumer_group, "PINWHEEL_LOG_FORMAT": "json",
           "PINWHEEL_ENV": "test"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.crashing_consumer", service, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(90):
            while b"CRASHING-CONSUMER-READY" not in (line := await process.stdout.readline()):
                assert line, "the crashing consumer exited before it was ready"
    except BaseException:
        process.kill()
        raise
    return process
