"""Take back coupons a faulty rule issued: every unused coupon of one rule (and edition) issued in a
time window is revoked through the coupon state machine, announced on ``rewards.events`` as
``rewards.coupon_revoked``; redeemed ones are reported, not touched. Idempotent: running it twice
revokes nothing more."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.ops.registry import build, settings_for
from services.rewards import handlers
from services.rewards.domain import coupons as coupon_rules


@dataclass
class RevokeSummary:
    rule: str
    dry_run: bool
    matched: int = 0
    revoked: int = 0
    already_revoked: int = 0
    kept_redeemed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "dry_run": self.dry_run, "matched": self.matched, "revoked": self.revoked,
                "already_revoked": self.already_revoked, "kept_redeemed": self.kept_redeemed}


def _id_prefix(rule: str, edition: int) -> str:
    return f"{rule}:" if edition == 1 else f"{rule}.v{edition}:"


async def revoke_coupons(rule: str, issued_from: datetime, issued_to: datetime, *, reason: str,
                         edition: int = 1, dry_run: bool = False, **settings_overrides: Any) -> RevokeSummary:
    app = build("rewards", settings_for("rewards", outbox_batching=False, **settings_overrides))
    runtime = app.state.runtime
    deps: handlers.Deps = app.state.rewards_deps
    summary = RevokeSummary(rule=rule, dry_run=dry_run)
    prefix = _id_prefix(rule, edition)
    if not dry_run:
        await runtime.broker.connect()
    try:
        cursor = deps.coupons.coupons.find(
            {"rule": rule, "issued_at": {"$gte": issued_from, "$lt": issued_to}}, {"outbox": 0})
        async for doc in cursor:
            if not str(doc["_id"]).startswith(prefix):
                continue  # another edition of the rule
            summary.matched += 1
            state = await deps.coupons.latest_state(doc["code"])
            if state.status == "redeemed":
                summary.kept_redeemed.append(doc["code"])
                continue
            if state.status == "revoked":
                summary.already_revoked += 1
                continue
            if dry_run:
                summary.revoked += 1
                continue
            decision = await handlers.change_coupon(
                doc, lambda _c, st: coupon_rules.revoke(st, cause=f"ops:{reason}", now=deps.clock.now(),
                                                        reason=f"operator:{reason}"),
                deps, None)
            if isinstance(decision, coupon_rules.Transition):
                summary.revoked += 1
            elif isinstance(decision, coupon_rules.NoChange):
                summary.already_revoked += 1
            else:
                summary.kept_redeemed.append(doc["code"])
        if not dry_run:
            await runtime.outbox.publish_pending(older_than=timedelta(0))
        return summary
    finally:
        with contextlib.suppress(Exception):
            await runtime.broker.stop()
        await runtime.mongo.close()
