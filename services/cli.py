"""``pinwheel``: serve a service, run the whole system locally, mint dev tokens, operate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

app = typer.Typer(help="pinwheel: referrals, group buying and rewards", no_args_is_help=True)

SERVICE_NAMES = ("referral", "groupbuy", "rewards")


@app.command()
def serve(name: Annotated[str, typer.Argument(help="referral | groupbuy | rewards")]) -> None:
    """Serve one service (its HTTP API and Kafka subscribers) in the foreground."""
    from shared.serve import serve as serve_service

    if name == "referral":
        from services.referral.bootstrap import build_app
        from services.referral.settings import ReferralSettings

        serve_service(ReferralSettings(), build_app)
    elif name == "groupbuy":
        from services.groupbuy.bootstrap import build_app as build_groupbuy
        from services.groupbuy.settings import GroupbuySettings

        serve_service(GroupbuySettings(), build_groupbuy)
    elif name == "rewards":
        from services.rewards.bootstrap import build_app as build_rewards
        from services.rewards.settings import RewardsSettings

        serve_service(RewardsSettings(), build_rewards)
    else:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICE_NAMES)}")


@app.command()
def up(demo: Annotated[bool, typer.Option(help="load demo data")] = True) -> None:
    """Start Kafka, the store and the three services in the background; return when all are ready."""
    from deploy.local import system

    env = system.up()
    if demo:
        _seed_demo(env)
    _print_urls()


@app.command()
def down() -> None:
    """Stop the services and the local infrastructure."""
    from deploy.local import system

    system.down()


@app.command()
def run(demo: Annotated[bool, typer.Option(help="load demo data")] = True) -> None:
    """Everything in the foreground: Ctrl-C stops it all."""
    from deploy.local import system

    config = system.SystemConfig.from_env()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        env = system.up(config)
        if demo:
            _seed_demo(env)
        _print_urls()
        typer.echo("Logs: " + str(config.state_dir) + "/*.log   Ctrl-C stops everything.")
        while not stopping:
            time.sleep(0.5)
            for service in system.SERVICES:
                if system.readiness(config, service) is None and not stopping:
                    typer.echo(f"{service} is not answering; see {config.state_dir}/{service}.log", err=True)
                    time.sleep(5)
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C (or the one uv forwards) must not cut the shutdown short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        system.down(config)


@app.command()
def token(
    subject: Annotated[str, typer.Argument(help="the user id (sub)")],
    scope: Annotated[str, typer.Option(help="space-separated scopes, e.g. 'admin' or 'service'")] = "",
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 3600,
) -> None:
    """Print a HS256 bearer token signed with the local secret (for curl and the demo)."""
    from shared.auth import issue_token
    from shared.settings import LOCAL_DEV_JWT_SECRET

    secret = os.environ.get("PINWHEEL_JWT_SECRET", LOCAL_DEV_JWT_SECRET)
    typer.echo(issue_token(secret, subject, scope, ttl))


@app.command()
def demo(
    run_id: Annotated[str | None, typer.Option(help="suffix of every id in this run (default: random)")] = None,
    failing_group: Annotated[bool, typer.Option(help="also leave a one-minute group to fail")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each step")] = 60.0,
) -> None:
    """Run the whole story against a RUNNING system (`pinwheel up`) and say what happened, step by step."""
    from services.demo import DemoConfig, DemoError, live_url, run_demo

    config = DemoConfig.from_env(run_id=run_id, step_timeout=timeout)
    typer.echo(f"pinwheel demo against referral {config.urls['referral']}, groupbuy {config.urls['groupbuy']}, "
               f"rewards {config.urls['rewards']}, Kafka {config.bootstrap_servers}")
    try:
        result = run_demo(config, say=typer.echo, failing_group=failing_group)
    except DemoError as exc:
        typer.echo(f"\ndemo stopped: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"\nDone in {result.seconds:.1f}s. Watch it live: {live_url(config)}")


ops = typer.Typer(help="Operator tools: replay, dead letters, consumer lag", no_args_is_help=True)
app.add_typer(ops, name="ops")
dlq = typer.Typer(help="Dead letters: list, show, redrive", no_args_is_help=True)
ops.add_typer(dlq, name="dlq")


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{value!r} needs a time zone, e.g. 2026-11-21T10:00:00Z")
    return moment.astimezone(UTC)


def _bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _topic(name: str) -> str:
    return os.environ.get("PINWHEEL_TOPIC_PREFIX", "") + name


@ops.command("replay")
def ops_replay(
    service: Annotated[str, typer.Argument(help="referral | groupbuy | rewards")],
    from_: Annotated[str, typer.Option("--from", help="RFC 3339 start, e.g. 2026-11-21T10:00:00Z")],
    to: Annotated[str | None, typer.Option("--to", help="RFC 3339 end (default: now)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="apply nothing; say what would change")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Re-run a service's handlers over its topics' events in a time range (the service may keep running)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.ops.replay import replay

    start = _parse_time(from_)
    assert start is not None
    with Progress(TextColumn("[bold]replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=as_json) as bar:
        task = bar.add_task(service, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, total=total, advance=done)

        summary = asyncio.run(replay(service, start, _parse_time(to), dry_run=dry_run, progress=progress))
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    verb = "would apply" if dry_run else "applied"
    typer.echo(f"{service}: {summary.events_read} events read; {summary.events_with_effects} events {verb} "
               f"{summary.effects_applied} effects; {summary.duplicates_skipped} duplicates skipped; "
               f"{summary.ignored} ignored; {summary.failures} failures")
    if summary.by_type:
        typer.echo("  by type: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.by_type.items())))
    if dry_run:
        typer.echo("  would write: " + (", ".join(f"{k}={v}" for k, v in summary.would_write.items()) or "nothing"))
        typer.echo("  would publish: "
                   + (", ".join(f"{k}={v}" for k, v in sorted(summary.would_publish.items())) or "nothing"))
    if summary.failure_reasons:
        typer.echo("  failures: " + ", ".join(f"{k}={v}" for k, v in summary.failure_reasons.items()))


@dlq.command("list")
def dlq_list(topic: Annotated[str, typer.Argument(help="e.g. orders.events (its .dlq is read)")]) -> None:
    """Dead letters of a topic with their reasons."""
    from services.ops.dlq import read_all

    letters = asyncio.run(read_all(_bootstrap(), _topic(topic)))
    for letter in letters:
        row = letter.as_dict()
        typer.echo(f"{row['ref']:>10}  {row['consumer_group'] or '-':<20} {row['reason']:<16} "
                   f"{row.get('type') or '-':<24} {row.get('id') or '-'}  {(row['error'] or '')[:80]}")
    typer.echo(f"{len(letters)} dead letters in {_topic(topic)}.dlq")


@dlq.command("show")
def dlq_show(topic: Annotated[str, typer.Argument()],
             ref: Annotated[str, typer.Argument(help="partition:offset, as listed")]) -> None:
    """One dead letter in full: headers and the original bytes."""
    from services.ops.dlq import read_all

    for letter in asyncio.run(read_all(_bootstrap(), _topic(topic))):
        if letter.ref == ref:
            typer.echo(json.dumps(letter.as_dict(with_value=True), indent=2))
            return
    raise typer.Exit(code=1)


@dlq.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument()],
    refs: Annotated[list[str] | None, typer.Argument(help="partition:offset of each record to redrive")] = None,
    reason: Annotated[str | None, typer.Option(help="redrive every dead letter with this reason")] = None,
    all_: Annotated[bool, typer.Option("--all", help="redrive every dead letter")] = False,
) -> None:
    """Send selected dead letters back to their original topic (after a fix); they keep their event ids."""
    from services.ops.dlq import read_all, redrive, select

    letters = asyncio.run(read_all(_bootstrap(), _topic(topic)))
    chosen = select(letters, refs, reason, all_)
    if not chosen:
        typer.echo("nothing selected: give partition:offset refs, --reason or --all", err=True)
        raise typer.Exit(code=1)
    sent = asyncio.run(redrive(_bootstrap(), chosen))
    typer.echo(f"redrove {sent} of {len(letters)} dead letters to {chosen[0].original_topic}")


@ops.command("revoke-coupons")
def ops_revoke_coupons(
    rule: Annotated[str, typer.Option(help="the rule that issued them, e.g. inviter_coupon")],
    from_: Annotated[str, typer.Option("--from", help="issued at or after (RFC 3339)")],
    to: Annotated[str, typer.Option("--to", help="issued before (RFC 3339)")],
    reason: Annotated[str, typer.Option(help="recorded on every revocation, e.g. bad-deploy-1121")],
    edition: Annotated[int, typer.Option(help="the rule edition that issued them")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, change nothing")] = False,
) -> None:
    """Revoke the unused coupons one rule issued in a time window (after a faulty rule was fixed)."""
    from services.ops.coupons import revoke_coupons

    start, end = _parse_time(from_), _parse_time(to)
    assert start is not None and end is not None
    summary = asyncio.run(revoke_coupons(rule, start, end, reason=reason, edition=edition, dry_run=dry_run))
    verb = "would revoke" if dry_run else "revoked"
    typer.echo(f"{rule} edition {edition}: {summary.matched} coupons issued in the window; {verb} "
               f"{summary.revoked}; {summary.already_revoked} already revoked; "
               f"{len(summary.kept_redeemed)} already redeemed (kept): {' '.join(summary.kept_redeemed[:20])}")


@ops.command("lag")
def ops_lag() -> None:
    """Consumer lag per service, topic and partition."""
    from services.ops.lag import consumer_lag

    rows = asyncio.run(consumer_lag())
    for row in rows:
        typer.echo(f"{row.service:9} {row.topic:28} p{row.partition:<3} committed={row.committed!s:>8} "
                   f"end={row.end:>8} lag={row.lag}")
    typer.echo(f"total lag: {sum(row.lag for row in rows)}")


def _print_urls() -> None:
    from deploy.local import system

    config = system.SystemConfig.from_env()
    for service in system.SERVICES:
        typer.echo(f"  {service:9} {config.url(service)}   docs {config.url(service)}/docs")


def _seed_demo(env: dict[str, str]) -> None:
    from services.demo import seed

    seed(env)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
