"""Scenario 3: join contention on the group-buy service over real HTTP.

A groupbuy process runs (uvicorn, its own port). An operator creates a campaign whose largest tier
is ``--seats`` people; ``--groups`` users each open a group; then ``--joins`` users join random
groups, ``--join-concurrency`` requests in flight. Reported: joins/s, p50/p99 of every request
(accepted or refused), outcomes, and a check that no group holds more seats than its largest tier
and that every accepted join holds a seat. Baseline: the same number of ``GET /healthz`` at the
same concurrency (the HTTP stack's own cost).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    Infra,
    ScenarioResult,
    auth,
    drop_database,
    drop_topics,
    finish_chart,
    namespace,
    percentile,
    plot_latency_cdf,
    pyplot,
    service_processes,
)
from bench.http import HttpPool

Outcome = tuple[float, int, str | None]


async def _timed(client: HttpPool, gate: asyncio.Semaphore, method: str, path: str,
                 headers: dict[str, str] | None = None) -> Outcome:
    async with gate:
        started = time.perf_counter()
        response = await client.request(method, path, headers)
        elapsed = time.perf_counter() - started
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    return elapsed, response.status_code, code


def _summary(results: list[Outcome], wall: float) -> dict[str, Any]:
    latencies = [r[0] * 1000 for r in results]
    return {"requests": len(results), "per_second": len(results) / wall, "seconds": wall,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=0), "latencies_ms": latencies,
            "outcomes": dict(Counter(f"{status} {code or ''}".strip() for _, status, code in results))}


async def run_joins(infra: Infra, joins: int, groups: int, seats: int, concurrency: int) -> dict[str, Any]:
    ns = namespace("gb")
    try:
        async with service_processes("groupbuy", infra, ns) as (proc,), HttpPool(proc.url, concurrency) as client:
            now = datetime.now(UTC)
            tiers = [{"size": size, "percent_off": 5 * size} for size in range(2, seats + 1)]
            campaign = await client.post("/v1/campaigns", auth("ops", "admin"), {
                "sku": "bench", "list_price": 10000, "tiers": tiers, "stock": joins + groups,
                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                "ends_at": (now + timedelta(days=1)).isoformat()})
            campaign.raise_for_status()
            campaign_id = campaign.json()["campaign_id"]
            gate = asyncio.Semaphore(min(concurrency, 20))
            opened = await asyncio.gather(*(
                _open(client, gate, campaign_id, f"opener{i}") for i in range(groups)))
            group_ids = list(opened)
            gate = asyncio.Semaphore(concurrency)
            requests = [(random.choice(group_ids), f"joiner{i}") for i in range(joins)]
            # warm the healthz path and connections once (both runs start warm)
            await asyncio.gather(*(_timed(client, gate, "GET", "/healthz") for _ in range(concurrency)))
            started = time.perf_counter()
            results = await asyncio.gather(*(
                _timed(client, gate, "POST", f"/v1/groups/{g}/members", auth(u)) for g, u in requests))
            join_row = _summary(results, time.perf_counter() - started)
            started = time.perf_counter()
            baseline = await asyncio.gather(*(_timed(client, gate, "GET", "/healthz") for _ in range(joins)))
            health_row = _summary(baseline, time.perf_counter() - started)
            taken = 0
            overfilled = []
            for group_id in group_ids:
                view = (await client.get(f"/v1/groups/{group_id}", auth("checker"))).json()
                taken += view["seats_taken"]
                if view["seats_taken"] > seats:
                    overfilled.append(group_id)
    finally:
        await drop_database(infra, f"{ns}_groupbuy")
        await drop_topics(infra, ns)
    accepted = join_row["outcomes"].get("201", 0)
    return {"joins": join_row, "healthz": health_row, "groups": groups, "seats_per_group": seats,
            "seats_taken": taken, "accepted": accepted, "overfilled": len(overfilled),
            "consistent": not overfilled and taken == groups + accepted, "concurrency": concurrency}


async def _open(client: HttpPool, gate: asyncio.Semaphore, campaign_id: str, user: str) -> str:
    async with gate:
        response = await client.post(f"/v1/campaigns/{campaign_id}/groups", auth(user))
    response.raise_for_status()
    return str(response.json()["group_id"])


async def scenario_joins(infra: Infra, joins: int, groups: int, seats: int, concurrency: int) -> ScenarioResult:
    result = ScenarioResult("3_join_contention", "Join contention: concurrent joins over HTTP",
                            target="p99 ≤ 100 ms; no group overfilled")
    started = time.perf_counter()
    run = await run_joins(infra, joins, groups, seats, concurrency)
    j, h = run["joins"], run["healthz"]
    result.figures = {k: ({kk: vv for kk, vv in v.items() if kk != "latencies_ms"} if isinstance(v, dict) else v)
                      for k, v in run.items()}
    result.rows = [
        {"requests": "POST /v1/groups/{id}/members", "n": j["requests"], "per s": j["per_second"],
         "p50 ms": j["p50_ms"], "p99 ms": j["p99_ms"], "max ms": j["max_ms"],
         "outcomes": ", ".join(f"{k}: {v}" for k, v in sorted(j["outcomes"].items()))},
        {"requests": "GET /healthz (baseline)", "n": h["requests"], "per s": h["per_second"],
         "p50 ms": h["p50_ms"], "p99 ms": h["p99_ms"], "max ms": h["max_ms"],
         "outcomes": ", ".join(f"{k}: {v}" for k, v in sorted(h["outcomes"].items()))},
    ]
    result.met = j["p99_ms"] <= 100 and run["consistent"]
    result.notes.append(
        f"{run['groups']} groups of at most {run['seats_per_group']} seats, {run['concurrency']} requests in "
        f"flight; seats taken {run['seats_taken']} = {run['groups']} openers + {run['accepted']} accepted joins; "
        f"overfilled groups: {run['overfilled']}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_latency_cdf(ax, [(f"{label}: p99 {row['p99_ms']:.0f} ms, {row['per_second']:.0f}/s",
                           row["latencies_ms"], None) for row, label in ((j, "joins"), (h, "/healthz baseline"))],
                     100, "request latency (ms, log scale)", "% of requests")
    ax.set_title(f"{j['requests']} joins over {run['groups']} groups")
    ax.legend(loc="lower right", fontsize=8)
    return finish_chart(fig, result, started)
