"""Join contention on the group-buy service: N concurrent joins spread over M groups.

Not a test: it prints figures. Default: the service in-process (ASGI, no sockets) on the Kafka and
store named by KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI, in a throw-away namespace; ``--url`` targets a
running server instead (signed with the local dev secret). Reports joins/s, p50/p99 latency, seats
taken, checks that no group was overfilled, and the same number of ``/healthz`` requests as a baseline.

    uv run python bench/bench_join_contention.py --joins 2000 --groups 50 --concurrency 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.auth import issue_token
from shared.settings import LOCAL_DEV_JWT_SECRET


def auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(LOCAL_DEV_JWT_SECRET, user, scope)}"}


@contextlib.asynccontextmanager
async def client_for(url: str | None) -> AsyncIterator[httpx.AsyncClient]:
    if url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield client
        return
    from asgi_lifespan import LifespanManager

    from services.groupbuy.bootstrap import build_app
    from services.groupbuy.settings import GroupbuySettings

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = GroupbuySettings(topic_prefix=f"{namespace}.", mongodb_database=f"{namespace}_groupbuy",
                                consumer_group=f"{namespace}-groupbuy", environment="test")
    app = build_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=60) as client:
        yield client
        await app.state.runtime.mongo.drop_database(settings.mongodb_database)


async def timed(client: httpx.AsyncClient, gate: asyncio.Semaphore, method: str, path: str,
                headers: dict[str, str] | None = None) -> tuple[float, int, str | None]:
    async with gate:
        started = time.perf_counter()
        response = await client.request(method, path, headers=headers)
        elapsed = time.perf_counter() - started
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    return elapsed, response.status_code, code


def summary(name: str, results: list[tuple[float, int, str | None]], wall: float) -> dict[str, Any]:
    latencies = sorted(r[0] for r in results)
    p99_index = max(0, int(len(latencies) * 0.99) - 1)
    row = {"name": name, "requests": len(results), "per_second": len(results) / wall,
           "p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[p99_index] * 1000,
           "outcomes": Counter(f"{status} {code or ''}".strip() for _, status, code in results)}
    print(f"{name:>10}: {row['requests']} requests in {wall:.2f}s = {row['per_second']:.0f}/s, "
          f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {dict(row['outcomes'])}")
    return row


async def main(joins: int, groups: int, concurrency: int, tiers: int, url: str | None) -> None:
    async with client_for(url) as client:
        now = datetime.now(UTC)
        tier_list = [{"size": size, "percent_off": 5 * size} for size in range(2, tiers + 2)]
        campaign = await client.post("/v1/campaigns", headers=auth("ops", "admin"), json={
            "sku": "bench", "list_price": 10000, "tiers": tier_list, "stock": joins + groups,
            "starts_at": (now - timedelta(minutes=1)).isoformat(), "ends_at": (now + timedelta(days=1)).isoformat()})
        campaign.raise_for_status()
        campaign_id = campaign.json()["campaign_id"]
        group_ids = []
        for i in range(groups):
            opened = await client.post(f"/v1/campaigns/{campaign_id}/groups", headers=auth(f"opener{i}"))
            opened.raise_for_status()
            group_ids.append(opened.json()["group_id"])
        max_seats = tier_list[-1]["size"]
        gate = asyncio.Semaphore(concurrency)
        requests = [(random.choice(group_ids), f"joiner{i}") for i in range(joins)]

        started = time.perf_counter()
        results = await asyncio.gather(*(timed(client, gate, "POST", f"/v1/groups/{g}/members", auth(u))
                                         for g, u in requests))
        join_row = summary("joins", results, time.perf_counter() - started)

        started = time.perf_counter()
        baseline = await asyncio.gather(*(timed(client, gate, "GET", "/healthz") for _ in range(joins)))
        summary("healthz", baseline, time.perf_counter() - started)

        taken = 0
        overfilled = []
        for group_id in group_ids:
            view = (await client.get(f"/v1/groups/{group_id}", headers=auth("checker"))).json()
            taken += view["seats_taken"]
            if view["seats_taken"] > max_seats:
                overfilled.append(group_id)
        joined = join_row["outcomes"].get("201", 0)
        print(f"seats taken: {taken} of {groups * max_seats} ({groups} openers + {joined} joins); "
              f"overfilled groups: {len(overfilled)}")
        assert not overfilled and taken == groups + joined, "seat accounting broken"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joins", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--tiers", type=int, default=2, help="tiers of size 2..tiers+1 (largest = seats per group)")
    parser.add_argument("--url", default=None, help="a running groupbuy server, e.g. http://127.0.0.1:8002")
    args = parser.parse_args()
    asyncio.run(main(args.joins, args.groups, args.concurrency, args.tiers, args.url))
