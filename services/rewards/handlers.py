"""Use cases of the rewards service: small functions taking a command or event and ``Deps``.

Decisions are pure (``domain/``); here they are read, decided and stored by insert. Sequenced
appends (coupon transitions, ledger entries, budget claims) retry on a lost race: re-read, decide
again on the new state. Published events ride in the inserted document (outbox).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from prometheus_client import Counter

from services.rewards.adapters.publishing import OutboxBatcher
from services.rewards.adapters.store import (
    COUPONS,
    LEDGER,
    TRANSITIONS,
    AlreadyDone,
    BudgetStore,
    CouponStore,
    LedgerStore,
    RefusalStore,
    SeqTaken,
    coupon_from,
)
from services.rewards.domain import budgets as budget_rules
from services.rewards.domain import coupons as coupon_rules
from services.rewards.domain import ledger as ledger_rules
from services.rewards.domain.rules import (
    REVOCABLE_ON_DISQUALIFICATION,
    CommissionGrant,
    CouponGrant,
    Reward,
    RuleConfig,
    referral_key,
    rewards_for,
)
from shared.clock import Clock
from shared.events import CloudEvent
from shared.events import schemas as s
from shared.events.envelope import new_event_id
from shared.kafka import make_event, traceparent_of
from shared.mongo import Document
from shared.outbox import with_outbox

log = structlog.stdlib.get_logger(__name__)

REWARDS_GRANTED = Counter("pinwheel_rewards_granted_total", "Rewards granted", ["rule"])
# The names the Grafana dashboard reads (deploy/grafana/METRICS.md), counted once per decision.
COUPONS_ISSUED = Counter("pinwheel_rewards_coupons_issued_total", "Coupons issued", ["rule"])
COUPONS_REDEEMED = Counter("pinwheel_rewards_coupons_redeemed_total", "Coupon redemptions confirmed")
COUPONS_REVOKED = Counter("pinwheel_rewards_coupons_revoked_total", "Coupons revoked")
COMMISSION_AMOUNT = Counter("pinwheel_rewards_commission_amount_total", "Commission amounts in minor units",
                            ["kind"])
LEDGER_KIND = {"credit": "credited", "reversal": "reversed", "withdrawal": "withdrawn"}
BUDGET_REFUSALS = Counter("pinwheel_rewards_budget_refusals_total", "Rewards refused by a spent budget", ["rule"])
REWARDS_REFUSED = Counter("pinwheel_rewards_refused_total", "Rewards refused (recorded)", ["rule", "reason"])
COUPON_TRANSITIONS = Counter("pinwheel_coupon_transitions_total", "Coupon state changes", ["action"])
COUPON_ANOMALIES = Counter("pinwheel_coupon_anomalies_total",
                           "Order events naming coupons that cannot take that change", ["action", "code"])
APPEND_CONFLICTS = Counter("pinwheel_rewards_append_conflicts_total",
                           "Sequenced inserts that lost a race and were decided again", ["what"])

CONTENTION_DEADLINE = timedelta(seconds=60)


class Contention(Exception):
    """A sequence kept being taken by concurrent writers until the deadline; transient."""


@dataclass
class Deps:
    coupons: CouponStore
    ledger: LedgerStore
    budgets: BudgetStore
    refusals: RefusalStore
    publisher: OutboxBatcher
    clock: Clock
    rules: RuleConfig
    budget_config: list[budget_rules.Budget]
    reservation_ttl: timedelta
    min_withdrawal: int
    source: str


async def _lost_race(what: str, attempt: int, started: float) -> None:
    APPEND_CONFLICTS.labels(what).inc()
    if asyncio.get_running_loop().time() - started > CONTENTION_DEADLINE.total_seconds():
        raise Contention(what)
    # jitter spreads the losers so they do not collide again on the next number
    await asyncio.sleep(random.uniform(0, min(0.002 * attempt, 0.05)))


def _event(data: Any, deps: Deps, *parts: str, traceparent: str | None = None) -> CloudEvent[Any]:
    """The event of a decision; its trace is the one of the event being handled (the log context's
    unless given: a batch of events from several traces gives each its own)."""
    return make_event(data, source=deps.source, event_id=new_event_id(*parts), traceparent=traceparent)


# ================================================================== granting rewards


async def on_rewarding_event(event: CloudEvent[Any], deps: Deps) -> list[str]:
    """Grant what the rules say for this event; returns the reward ids granted now."""
    return await grant(rewards_for(event.type, event.data, event.id, deps.rules), deps)


async def on_rewarding_events(events: list[CloudEvent[Any]], deps: Deps) -> list[str]:
    """``on_rewarding_event`` for several events at once (a poll's worth, from different keys):
    their coupons are built in one pass, inserted with one round trip and published together."""
    traces = {event.id: traceparent_of(event) for event in events}
    return await grant([reward for event in events
                        for reward in rewards_for(event.type, event.data, event.id, deps.rules)], deps, traces)


async def grant(rewards: list[Reward], deps: Deps, traces: Mapping[str, str] | None = None) -> list[str]:
    """Decide and store ``rewards``; ``traces`` (source event id -> traceparent) when they come
    from several events, else the log context's trace is used."""
    traces = traces or {}
    budgeted = [r for r in rewards if budget_rules.budgets_for(r, deps.budget_config)]
    # concurrently: claims on one budget are decided by their sequence inserts, as across events
    admissions = dict(zip((r.reward_id for r in budgeted),
                          await asyncio.gather(*(_admit(r, deps) for r in budgeted)), strict=True))
    admitted = [r for r in rewards if admissions.get(r.reward_id, "admitted") == "admitted"]
    # granted (or refused) by an earlier delivery
    decided_coupons = [r.reward_id for r in budgeted
                       if admissions[r.reward_id] == "decided" and isinstance(r.grant, CouponGrant)]
    granted: list[str] = []
    coupon_rewards = [r for r in admitted if isinstance(r.grant, CouponGrant)]
    if coupon_rewards:
        # the decision for every coupon in one round trip; a duplicate is "done"
        documents = [_coupon_document(r, deps, traces.get(r.source_event_id)) for r in coupon_rewards]
        new_docs = await deps.coupons.insert_new(documents)
        for doc in new_docs:  # issued by the insert: counted once, whatever happens next
            REWARDS_GRANTED.labels(doc["rule"]).inc()
            COUPONS_ISSUED.labels(doc["rule"]).inc()
            granted.append(doc["_id"])
        await deps.publisher.publish(COUPONS, new_docs)
        new_ids = {doc["_id"] for doc in new_docs}
        decided_coupons += [d["_id"] for d in documents if d["_id"] not in new_ids]
    if decided_coupons:  # granted by an earlier delivery: did its events go out before a crash?
        await deps.publisher.ensure_published(COUPONS, decided_coupons, deps.coupons.by_id)
    commissions = [(r, r.grant) for r in admitted if isinstance(r.grant, CommissionGrant)]
    credited = await asyncio.gather(*(_credit_commission(r, commission, deps, traces.get(r.source_event_id))
                                      for r, commission in commissions))
    for (reward, _), was_credited in zip(commissions, credited, strict=True):
        if was_credited:
            REWARDS_GRANTED.labels(reward.rule).inc()
            granted.append(reward.reward_id)
    return granted


Admission = Literal["admitted", "decided", "refused"]


async def _admit(reward: Reward, deps: Deps) -> Admission:
    """For a reward drawing on budgets: "decided" (granted or refused by an earlier delivery),
    "refused" (a budget is spent; recorded now) or "admitted" (every budget claimed)."""
    if await _already_decided(reward, deps):
        return "decided"
    refusal = await _claim_budgets(reward, deps)
    if refusal is not None:
        await _record_refusal(reward, refusal, deps)
        return "refused"
    return "admitted"


def _coupon_document(reward: Reward, deps: Deps, traceparent: str | None = None) -> Document:
    grant = reward.grant
    assert isinstance(grant, CouponGrant)
    expires_at = reward.occurred_at + grant.valid_for
    code = reward.coupon_code
    issued = s.CouponIssued(
        user_id=reward.beneficiary, coupon_code=code, kind=grant.kind, value=grant.value,
        threshold=grant.threshold, expires_at=expires_at, rule=reward.rule,
        source_event_id=reward.source_event_id, issued_at=reward.occurred_at, reward_id=reward.reward_id)
    doc: Document = {
        "_id": reward.reward_id, "code": code, "user_id": reward.beneficiary, "rule": reward.rule,
        "kind": grant.kind, "value": grant.value, "threshold": grant.threshold, "currency": "CNY",
        "issued_at": reward.occurred_at, "expires_at": expires_at, "source_event_id": reward.source_event_id,
        "campaign": reward.campaign, "referral": reward.referral, "device_id": reward.device_id,
        "state": {"version": 0, "status": "available", "order_id": None, "reserved_at": None, "history": []},
        "reserved": False,  # kept with state by CouponStore.cache_state, for the reservation sweep
    }
    # published before the inbound offset is committed (OutboxBatcher.publish), not by the relay
    return with_outbox(doc, [_event(issued, deps, "coupon_issued", reward.reward_id, traceparent=traceparent)],
                       relayed=False)


async def _credit_commission(reward: Reward, grant: CommissionGrant, deps: Deps,
                             traceparent: str | None = None) -> bool:
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        state = await deps.ledger.last(reward.beneficiary)
        now = deps.clock.now()
        available_at = reward.occurred_at + grant.hold
        entry = ledger_rules.credit(state, ref=reward.reward_id, amount=grant.amount,
                                    available_at=available_at, at=now)
        credited = s.CommissionCredited(
            user_id=reward.beneficiary, entry_id=f"{reward.beneficiary}:{entry.seq}", amount=grant.amount,
            available_at=available_at, rule=reward.rule, credited_at=now,
            source_event_id=reward.source_event_id, reward_id=reward.reward_id)
        extra = with_outbox({"source": _source(reward)},
                            [_event(credited, deps, "ledger", entry.ref, traceparent=traceparent)])
        try:
            doc = await deps.ledger.append(reward.beneficiary, entry, extra)
        except SeqTaken:
            await _lost_race("ledger", attempt, started)
            continue
        except AlreadyDone:
            return False
        await deps.publisher.submit(LEDGER, doc)
        COMMISSION_AMOUNT.labels(LEDGER_KIND[entry.kind]).inc(abs(entry.amount))
        return True


def _source(reward: Reward) -> Document:
    return {"rule": reward.rule, "source_event_id": reward.source_event_id, "reward_id": reward.reward_id,
            "referral": reward.referral, "campaign": reward.campaign}


async def _already_decided(reward: Reward, deps: Deps) -> bool:
    """Granted or refused before (checked only when budgets apply, to spend no budget twice)."""
    if await deps.refusals.exists(reward.reward_id):
        return True
    if isinstance(reward.grant, CouponGrant):
        return await deps.coupons.by_code(reward.coupon_code) is not None
    return await deps.ledger.has_ref(reward.reward_id)


async def _claim_budgets(reward: Reward, deps: Deps) -> str | None:
    """Claim every budget the reward draws on, narrowest first; on the first that does not fit,
    give back the claims made and return the reason."""
    claimed: list[str] = []
    for key, budget in budget_rules.budgets_for(reward, deps.budget_config):
        if not await _claim(key, budget, reward, deps):
            for held in claimed:
                await _release(held, reward, deps)
            return f"budget_exceeded:{key}"
        claimed.append(key)
    return None


async def _claim(key: str, budget: budget_rules.Budget, reward: Reward, deps: Deps) -> bool:
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        seq, use = await deps.budgets.use(key)
        if not budget_rules.fits(use, budget, reward.value):
            # full, perhaps because a concurrent delivery of this very reward claimed the last slot
            return await deps.budgets.holds(key, reward.reward_id)
        try:
            await deps.budgets.append(key, seq + 1, "claim", reward.reward_id, reward.value,
                                      budget_rules.after_claim(use, reward.value), deps.clock.now())
            return True
        except SeqTaken:
            await _lost_race("budget", attempt, started)
        except AlreadyDone:
            # claimed by an earlier or concurrent delivery; held unless it was given back
            return await deps.budgets.holds(key, reward.reward_id)


async def _release(key: str, reward: Reward, deps: Deps) -> None:
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        seq, use = await deps.budgets.use(key)
        try:
            await deps.budgets.append(key, seq + 1, "release", reward.reward_id, -reward.value,
                                      budget_rules.after_release(use, reward.value), deps.clock.now())
            return
        except SeqTaken:
            await _lost_race("budget", attempt, started)
        except AlreadyDone:
            return


async def _record_refusal(reward: Reward, reason: str, deps: Deps) -> None:
    document = {"_id": reward.reward_id, "rule": reward.rule, "beneficiary": reward.beneficiary,
                "source_event_id": reward.source_event_id, "campaign": reward.campaign,
                "device_id": reward.device_id, "value": reward.value, "reason": reason,
                "occurred_at": reward.occurred_at, "at": deps.clock.now()}
    if await deps.refusals.record(document):
        REWARDS_REFUSED.labels(reward.rule, reason.split(":")[0]).inc()
        if reason.startswith("budget"):
            BUDGET_REFUSALS.labels(reward.rule).inc()
        log.info("reward refused", reward_id=reward.reward_id, reason=reason)


# ================================================================== taking rewards back


async def on_referral_disqualified(event: CloudEvent[s.ReferralDisqualified], deps: Deps) -> None:
    """Revoke what the referral's qualification granted: unused coupons, and commissions (a
    negative entry if the money was withdrawn already)."""
    data = event.data
    referral = referral_key(data.inviter_id, data.invitee_id)
    rules = sorted(REVOCABLE_ON_DISQUALIFICATION)
    for coupon in await deps.coupons.granted_for_referral(referral, rules):
        decision = await change_coupon(
            coupon, lambda c, st: coupon_rules.revoke(st, cause=event.id, now=deps.clock.now(),
                                                      reason=f"referral_disqualified:{data.reason}"),
            deps, event.id)
        if isinstance(decision, coupon_rules.Refusal):
            COUPON_ANOMALIES.labels("revoke", decision.code).inc()
            log.info("coupon not revoked", code=coupon["code"], why=decision.code)
    for credit in await deps.ledger.credits_for_referral(referral):
        if credit["source"]["rule"] in REVOCABLE_ON_DISQUALIFICATION:
            await _reverse_commission(credit, f"referral_disqualified:{data.reason}", event.id, deps)


async def _reverse_commission(credit: Document, reason: str, source_event_id: str, deps: Deps) -> bool:
    user_id = credit["user_id"]
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        state = await deps.ledger.last(user_id)
        now = deps.clock.now()
        entry = ledger_rules.reverse(state, credit_ref=credit["ref"], amount=credit["amount"], at=now)
        reversed_ = s.CommissionReversed(
            user_id=user_id, entry_id=f"{user_id}:{entry.seq}", reversed_entry_id=credit["_id"],
            amount=entry.amount, reason=reason[:256], reversed_at=now, source_event_id=source_event_id)
        source = {**credit["source"], "source_event_id": source_event_id, "reverses": credit["ref"]}
        extra = with_outbox({"source": source}, [_event(reversed_, deps, "ledger", entry.ref)])
        try:
            doc = await deps.ledger.append(user_id, entry, extra)
        except SeqTaken:
            await _lost_race("ledger", attempt, started)
            continue
        except AlreadyDone:
            return False
        await deps.publisher.submit(LEDGER, doc)
        COMMISSION_AMOUNT.labels(LEDGER_KIND[entry.kind]).inc(abs(entry.amount))
        return True


# ================================================================== coupon state changes

Decide = Callable[[coupon_rules.Coupon, coupon_rules.CouponState], coupon_rules.Decision]


async def change_coupon(coupon_doc: Document, decide: Decide, deps: Deps,
                        source_event_id: str | None = None) -> coupon_rules.Decision:
    """Read the coupon's latest state, decide, append ``code:version``; decide again if a
    concurrent change took that version."""
    coupon = coupon_from(coupon_doc)
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        state = await deps.coupons.latest_state(coupon.code)
        decision = decide(coupon, state)
        if not isinstance(decision, coupon_rules.Transition):
            if isinstance(decision, coupon_rules.NoChange):
                await deps.coupons.cache_state(coupon.code, state)
            return decision
        events = _transition_events(coupon, decision, source_event_id, deps)
        extra = with_outbox({"source_event_id": source_event_id}, events)
        try:
            doc = await deps.coupons.append(coupon_doc, decision, extra)
        except SeqTaken:
            await _lost_race("coupon", attempt, started)
            continue
        COUPON_TRANSITIONS.labels(decision.action).inc()
        if decision.action == "confirm":
            COUPONS_REDEEMED.inc()
        elif decision.action == "revoke":
            COUPONS_REVOKED.inc()
        await deps.coupons.cache_state(coupon.code, decision.state)
        if events:
            await deps.publisher.submit(TRANSITIONS, doc)
        return decision


def _transition_events(coupon: coupon_rules.Coupon, t: coupon_rules.Transition, source_event_id: str | None,
                       deps: Deps) -> list[CloudEvent[Any]]:
    parts = ("coupon", coupon.code, str(t.version))
    if t.action == "confirm" and t.order_id:
        return [_event(s.CouponRedeemed(user_id=coupon.user_id, coupon_code=coupon.code, order_id=t.order_id,
                                        redeemed_at=t.at, source_event_id=source_event_id or t.order_id),
                       deps, *parts)]
    if t.action == "revoke":
        return [_event(s.CouponRevoked(user_id=coupon.user_id, coupon_code=coupon.code,
                                       reason=(t.reason or "revoked")[:256], revoked_at=t.at,
                                       source_event_id=source_event_id or coupon.code), deps, *parts)]
    return []


async def on_order_completed(event: CloudEvent[s.OrderCompleted], deps: Deps) -> None:
    """The order used these coupons: their reservations are confirmed (redeemed)."""
    data = event.data
    for code in dict.fromkeys(data.coupon_codes):
        coupon = await deps.coupons.by_code(code)
        if coupon is None:
            COUPON_ANOMALIES.labels("confirm", "coupon_not_found").inc()
            log.warning("order names an unknown coupon", code=code, order_id=data.order_id)
            continue
        decision = await change_coupon(
            coupon, lambda c, st: coupon_rules.confirm(c, st, user_id=data.user_id, order_id=data.order_id,
                                                       now=deps.clock.now(), reservation_ttl=deps.reservation_ttl),
            deps, event.id)
        if isinstance(decision, coupon_rules.Refusal):
            COUPON_ANOMALIES.labels("confirm", decision.code).inc()
            log.warning("order's coupon could not be confirmed", code=code, order_id=data.order_id,
                        why=decision.code)


async def on_order_refunded(event: CloudEvent[s.OrderRefunded], deps: Deps) -> None:
    """A full refund gives the order's coupons back to their owner, if they have not expired."""
    data = event.data
    if not data.full:
        return
    for code in await deps.coupons.codes_redeemed_by(data.order_id):
        coupon = await deps.coupons.by_code(code)
        if coupon is None:
            continue
        decision = await change_coupon(
            coupon, lambda c, st: coupon_rules.restore(c, st, order_id=data.order_id, now=deps.clock.now()),
            deps, event.id)
        if isinstance(decision, coupon_rules.Refusal):
            log.info("coupon not given back", code=code, order_id=data.order_id, why=decision.code)


async def reserve_coupon(code: str, *, order_id: str, user_id: str, order_amount: int,
                         deps: Deps) -> tuple[coupon_rules.Decision, Document]:
    coupon = await deps.coupons.by_code(code)
    if coupon is None:
        return coupon_rules.Refusal(404, "coupon_not_found", "no coupon has this code"), {}
    decision = await change_coupon(
        coupon, lambda c, st: coupon_rules.reserve(c, st, user_id=user_id, order_id=order_id,
                                                   order_amount=order_amount, now=deps.clock.now(),
                                                   reservation_ttl=deps.reservation_ttl),
        deps)
    return decision, coupon


async def release_coupon(code: str, order_id: str, deps: Deps) -> tuple[coupon_rules.Decision, Document]:
    coupon = await deps.coupons.by_code(code)
    if coupon is None:
        return coupon_rules.Refusal(404, "coupon_not_found", "no coupon has this code"), {}
    decision = await change_coupon(
        coupon, lambda c, st: coupon_rules.release(st, order_id=order_id, now=deps.clock.now()), deps)
    return decision, coupon


async def release_lapsed_reservations(deps: Deps, limit: int = 500) -> int:
    """One pass of the scheduler: release reservations left unconfirmed past the timeout."""
    now = deps.clock.now()
    released = 0
    for coupon in await deps.coupons.reserved_before(now - deps.reservation_ttl, limit):
        decision = await change_coupon(
            coupon, lambda c, st: coupon_rules.release_lapsed(st, deps.clock.now(), deps.reservation_ttl), deps)
        if isinstance(decision, coupon_rules.Transition):
            released += 1
    return released


# ================================================================== withdrawals


async def withdraw(user_id: str, amount: int, withdrawal_id: str,
                   deps: Deps) -> ledger_rules.Entry | ledger_rules.Refusal | None:
    """Append a withdrawal if the available balance covers it; None if this withdrawal id was
    appended before (a retry)."""
    started = asyncio.get_running_loop().time()
    attempt = 0
    while True:
        attempt += 1
        state = await deps.ledger.last(user_id)
        now = deps.clock.now()
        decision = ledger_rules.withdraw(state, withdrawal_id=withdrawal_id, amount=amount,
                                         minimum=deps.min_withdrawal, at=now)
        if isinstance(decision, ledger_rules.Refusal):
            return decision
        requested = s.WithdrawalRequested(user_id=user_id, withdrawal_id=withdrawal_id, amount=amount,
                                          requested_at=now, source_event_id=decision.ref)
        source = {"rule": "withdrawal", "source_event_id": decision.ref, "withdrawal_id": withdrawal_id}
        extra = with_outbox({"source": source}, [_event(requested, deps, "ledger", decision.ref)])
        try:
            doc = await deps.ledger.append(user_id, decision, extra)
        except SeqTaken:
            await _lost_race("ledger", attempt, started)
            continue
        except AlreadyDone:
            return None
        await deps.publisher.submit(LEDGER, doc)
        COMMISSION_AMOUNT.labels("withdrawn").inc(abs(decision.amount))
        return decision


def balances(state: ledger_rules.LedgerState, now: datetime) -> dict[str, int]:
    return {"pending": state.pending(now), "available": state.available(now), "withdrawn": state.withdrawn,
            "balance": state.balance}
