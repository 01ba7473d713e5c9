"""``python -m bench`` (``make bench``): every scenario with its baseline, one command.

Starts its own Kafka and store like the tests do (or uses KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI),
runs the scenarios, writes ``bench/RESULTS.md``, ``bench/results.json`` and one PNG per scenario
under ``bench/charts/``. Sizes are flags; the defaults take a few minutes on 2 cores. Nothing here
is a test: no figure is asserted, targets are reported as met or not.

    uv run python -m bench                          # everything, default sizes
    uv run python -m bench --only 1,3 --events 20000
    uv run python -m bench --save-as before         # also keep the figures in bench/runs/before.json
    uv run python -m bench --compare bench/runs/before.json   # adds a before/after table
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, ScenarioResult, infra, machine


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="1,2,3,4,5", help="scenarios to run, e.g. 1,3")
    p.add_argument("--events", type=int, default=40_000,
                   help="scenario 1: distinct events (enough for ~10 s of steady consumption)")
    p.add_argument("--duplicates", type=float, default=0.1, help="scenarios 1, 4, 5: share of exact duplicates")
    p.add_argument("--rate", type=float, default=500, help="scenario 2: events/s")
    p.add_argument("--latency-seconds", type=float, default=20, help="scenario 2: how long to produce")
    p.add_argument("--latency-sample", type=float, default=0.02, help="scenario 2: share of events tracked")
    p.add_argument("--joins", type=int, default=2000, help="scenario 3: joins")
    p.add_argument("--groups", type=int, default=100, help="scenario 3: groups")
    p.add_argument("--seats", type=int, default=3, help="scenario 3: seats per group (largest tier)")
    p.add_argument("--join-concurrency", type=int, default=100, help="scenario 3: requests in flight")
    p.add_argument("--replay-events", type=int, default=100_000, help="scenario 4: distinct events in the history")
    p.add_argument("--scaling-events", type=int, default=40_000, help="scenario 5: distinct events per run")
    p.add_argument("--processes", default="1,2,4", help="scenario 5: process counts")
    p.add_argument("--profile", type=Path, default=None,
                   help="scenario 1: run the rewards process under pyinstrument, reports into this directory")
    p.add_argument("--save-as", default=None, help="also save the figures as bench/runs/<name>.json")
    p.add_argument("--compare", type=Path, default=None, help="a saved run to compare with (before/after)")
    p.add_argument("--merge", type=Path, default=None,
                   help="a saved run whose scenarios not run now are kept in the report (re-run one scenario)")
    p.add_argument("--label", default="", help="a note for this run (e.g. the commit or the change)")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, found: Any) -> list[ScenarioResult]:
    from bench.join_contention import scenario_joins
    from bench.latency import scenario_latency
    from bench.replay import scenario_replay
    from bench.rewards_throughput import scenario_scaling, scenario_throughput

    wanted = {s.strip() for s in args.only.split(",")}
    results: list[ScenarioResult] = []
    steps = [
        ("1", lambda: scenario_throughput(found, args.events, args.duplicates, profile=args.profile)),
        ("2", lambda: scenario_latency(found, args.rate, args.latency_seconds, args.latency_sample)),
        ("3", lambda: scenario_joins(found, args.joins, args.groups, args.seats, args.join_concurrency)),
        ("4", lambda: scenario_replay(found, args.replay_events, args.duplicates)),
        ("5", lambda: scenario_scaling(found, args.scaling_events, args.duplicates,
                                       [int(x) for x in args.processes.split(",")])),
    ]
    for number, step in steps:
        if number not in wanted:
            continue
        print(f"bench: scenario {number} ...", flush=True)
        try:
            result = await step()
        except Exception as exc:  # one broken scenario must not hide the others' figures
            traceback.print_exc()
            result = ScenarioResult(f"{number}_failed", f"Scenario {number} failed", met=False,
                                    notes=[f"{type(exc).__name__}: {exc}"[:2000]])
        print(f"bench: scenario {number}: {result.title}: met={result.met} ({result.seconds:.0f} s)", flush=True)
        for row in result.rows:
            print("   ", {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        for note in result.notes:
            print("   ", note, flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    from bench.report import write_report

    args = parse(argv)
    started = time.perf_counter()
    when = datetime.now(UTC)
    info = machine()
    with infra() as found:
        # the load generator's own full collections (60-110 ms seen) would stall its producer and
        # pollers and be measured as the service's latency: what exists now is left out of them
        gc.freeze()
        results = asyncio.run(run(args, found))
    run_record = {
        "date": when.isoformat(timespec="seconds").replace("+00:00", "Z"), "label": args.label,
        "command": "uv run python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info, "kafka": found.kafka_version, "store": found.store_version,
        "infra": "started by the bench" if found.started_here else "from KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI",
        "seconds": time.perf_counter() - started,
        "scenarios": [r.__dict__ for r in results],
    }
    if args.merge:
        kept = json.loads(args.merge.read_text())
        ran = {s["key"].split("_")[0] for s in run_record["scenarios"]}
        run_record["scenarios"] = sorted(
            [s for s in kept["scenarios"] if s["key"].split("_")[0] not in ran] + run_record["scenarios"],
            key=lambda s: s["key"])
        run_record["command"] += f" (scenarios {', '.join(sorted(ran))}; the others from {kept['date']})"
    (BENCH_DIR / "results.json").write_text(json.dumps(run_record, indent=2, default=str))
    if args.save_as:
        (BENCH_DIR / "runs").mkdir(exist_ok=True)
        (BENCH_DIR / "runs" / f"{args.save_as}.json").write_text(json.dumps(run_record, indent=2, default=str))
    before = json.loads(args.compare.read_text()) if args.compare else None
    write_report(run_record, before)
    print(f"bench: wrote {BENCH_DIR / 'RESULTS.md'} in {run_record['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
