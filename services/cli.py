"""``pinwheel``: serve a service, run the whole system locally, mint dev tokens, operate."""

from __future__ import annotations

import os
import signal
import time
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
