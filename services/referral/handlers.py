"""Use cases of the referral service: small functions of (command or event, deps).

Facts (registrations, orders, full refunds) are recorded as they arrive, in any order; decisions
(binding, review, qualification, disqualification) are inserts with deterministic keys that carry
their events in the same document (outbox). Every use case may run again after a crash or a
redelivery and completes what was left undone without doing anything twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.referral import metrics
from services.referral.adapters.store import BINDINGS, LEDGER, REVIEWS, ReferralStore
from services.referral.domain.codes import generate_code, looks_like_code, normalize_code
from services.referral.domain.milestones import (
    FISSION_EXPERT,
    HIGH_FISSION_USER,
    LedgerState,
    next_milestone,
    next_state,
)
from services.referral.domain.rules import (
    BindingFacts,
    BindingPolicy,
    Refusal,
    flags_for,
    refusal_for,
)
from services.referral.domain.status import (
    Decision,
    Period,
    ReferralStatus,
    is_active,
    mask_id,
    period_start,
    referral_status,
    utc_day,
)
from services.referral.settings import ReferralSettings
from shared.events import schemas as s
from shared.events.envelope import CloudEvent, EventData, new_event_id
from shared.kafka import make_event
from shared.mongo import Document
from shared.outbox import OutboxRelay, with_outbox

Clock = Callable[[], datetime]
FULL_REFUND_REASON = "full_refund_within_hold"


@dataclass
class Deps:
    store: ReferralStore
    outbox: OutboxRelay
    settings: ReferralSettings
    source: str
    clock: Clock

    @property
    def policy(self) -> BindingPolicy:
        return BindingPolicy(
            window=timedelta(days=self.settings.binding_window_days),
            daily_limit=self.settings.daily_binding_limit,
            shared_device_threshold=self.settings.shared_device_threshold,
            shared_ip_threshold=self.settings.shared_ip_threshold,
        )

    @property
    def thresholds(self) -> dict[str, int]:
        return {HIGH_FISSION_USER: self.settings.high_fission_at, FISSION_EXPERT: self.settings.fission_expert_at}

    def now(self) -> datetime:
        return to_store_precision(self.clock())

    def event(self, data: EventData, *decision: str) -> CloudEvent[Any]:
        """An outbound event whose id is derived from the decision, so re-deciding gives the same id."""
        return make_event(data, source=self.source, event_id=new_event_id(*decision))


def to_store_precision(moment: datetime) -> datetime:
    """Times as the store keeps them (milliseconds), so an event built now and one rebuilt later
    from the stored document carry the same values."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class BindingRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


class ReviewConflict(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ codes


async def get_or_create_code(deps: Deps, user_id: str) -> tuple[Document, bool]:
    """The caller's code: created once (``_id`` = user id), the same one afterwards."""
    for _ in range(20):
        existing = await deps.store.code_of(user_id)
        if existing is not None:
            return existing, False
        code = generate_code(deps.settings.code_length)
        outcome = await deps.store.insert_code(user_id, code, deps.now())
        if outcome == "created":
            created = await deps.store.code_of(user_id)
            assert created is not None
            return created, True
        # 'user_has_one': a concurrent request won, read it; 'code_taken': collision, draw again
    raise RuntimeError("could not allocate a referral code")


def share_url(deps: Deps, code: str) -> str:
    return deps.settings.share_base_url + code


# ------------------------------------------------------------------ facts from other systems


async def record_registration(deps: Deps, event: CloudEvent[s.UserRegistered]) -> Document:
    data = event.data
    return await deps.store.remember_registration({
        "_id": data.user_id, "registered_at": to_store_precision(data.registered_at), "device_id": data.device_id,
        "ip": str(data.ip) if data.ip is not None else None, "phone_hash": data.phone_hash,
        "referral_code": data.referral_code, "source_event_id": event.id, "received_at": deps.now(),
    })


async def on_registered(deps: Deps, event: CloudEvent[s.UserRegistered]) -> None:
    """Record the registration; a ``referral_code`` binds (or is recorded as a refused binding)."""
    registration = await record_registration(deps, event)
    code = event.data.referral_code
    if code is None:
        return
    if await deps.store.refusal(event.id) is not None:
        return  # decided before this redelivery
    try:
        await bind(deps, invitee_id=event.data.user_id, code=code, channel="registration",
                   bound_at=registration["registered_at"], source_event_id=event.id)
    except BindingRefused as refused:
        await deps.store.record_refusal({
            "_id": event.id, "invitee_id": event.data.user_id, "code": code, "reason": refused.refusal.value,
            "channel": "registration", "refused_at": deps.now()})


async def on_order_completed(deps: Deps, event: CloudEvent[s.OrderCompleted]) -> None:
    data = event.data
    await deps.store.remember_order({
        "_id": data.order_id, "user_id": data.user_id, "amount": data.amount,
        "completed_at": to_store_precision(data.completed_at), "source_event_id": event.id})
    await try_qualify(deps, data.user_id)


async def on_order_refunded(deps: Deps, event: CloudEvent[s.OrderRefunded]) -> None:
    data = event.data
    if not data.full:
        return  # only a full refund disqualifies
    await deps.store.remember_full_refund({
        "_id": data.order_id, "user_id": data.user_id, "refunded_amount": data.refunded_amount,
        "refunded_at": to_store_precision(data.refunded_at), "source_event_id": event.id})
    await try_disqualify(deps, data.user_id)


# ------------------------------------------------------------------ binding


async def bind(deps: Deps, *, invitee_id: str, code: str, channel: s.BindingChannel,
               bound_at: datetime | None = None, source_event_id: str | None = None) -> Document:
    """Bind ``invitee_id`` to the owner of ``code``; raises BindingRefused with the reason."""
    store = deps.store
    normalized = normalize_code(code)
    owner = await store.owner_of_code(normalized) if looks_like_code(normalized) else None
    inviter_id: str | None = owner["_id"] if owner else None
    existing = await store.binding_of(invitee_id)
    if existing is not None and existing["inviter_id"] == inviter_id:
        return await _binding_settled(deps, existing)  # the same binding again: a retry or redelivery
    registration = await store.registration_of(invitee_id)
    when = bound_at or deps.now()
    earliest_order = await store.earliest_order_of(invitee_id)
    inviter_registration = await store.registration_of(inviter_id) if inviter_id else None
    chain = await store.inviter_chain(inviter_id, deps.settings.cycle_max_depth) if inviter_id else []
    facts = BindingFacts(
        invitee_id=invitee_id, inviter_id=inviter_id, bound_at=when,
        registered_at=registration["registered_at"] if registration else None,
        already_bound=existing is not None,
        earliest_order_at=earliest_order["completed_at"] if earliest_order else None,
        invitee_device=registration.get("device_id") if registration else None,
        inviter_device=inviter_registration.get("device_id") if inviter_registration else None,
        inviter_chain=chain,
    )
    refusal = refusal_for(facts, deps.policy)
    if refusal is not None:
        metrics.BINDINGS.labels(channel, refusal.value).inc()
        raise BindingRefused(refusal)
    assert inviter_id is not None and registration is not None
    device_id, ip = registration.get("device_id"), registration.get("ip")
    slot = await store.take_daily_slot(inviter_id, utc_day(when), invitee_id, deps.now())
    flags = flags_for(
        daily_slot=slot,
        others_on_device=await store.invitees_sharing(inviter_id, "device_id", device_id, invitee_id),
        others_on_ip=await store.invitees_sharing(inviter_id, "ip", ip, invitee_id),
        policy=deps.policy,
    )
    document: Document = {
        "_id": invitee_id, "inviter_id": inviter_id, "code": normalized, "bound_at": when, "channel": channel,
        "device_id": device_id, "ip": ip, "flagged": bool(flags), "flag_reasons": [f.value for f in flags],
        "daily_slot": slot, "source_event_id": source_event_id, "created_at": deps.now(),
    }
    if flags:
        event = deps.event(s.ReferralFlagged(
            inviter_id=inviter_id, invitee_id=invitee_id, reasons=[f.value for f in flags], flagged_at=when,
            source_event_id=source_event_id), "referral.flagged", invitee_id)
    else:
        event = _bound_event(deps, document)
    with_outbox(document, [event])
    if not await store.insert_binding(document):
        winner = await store.binding_of(invitee_id)
        if winner is None or winner["inviter_id"] != inviter_id:
            metrics.BINDINGS.labels(channel, Refusal.ALREADY_BOUND.value).inc()
            raise BindingRefused(Refusal.ALREADY_BOUND)
        return await _binding_settled(deps, winner)
    metrics.BINDINGS.labels(channel, "flagged" if flags else "bound").inc()
    if flags:
        metrics.FLAGS.inc()
    await deps.outbox.flush_quietly(BINDINGS, document)
    # An order after the binding time may already be known (it arrived first): qualify with it now.
    await try_qualify(deps, invitee_id)
    return document


def _bound_event(deps: Deps, binding: Document) -> CloudEvent[Any]:
    return deps.event(s.ReferralBound(
        inviter_id=binding["inviter_id"], invitee_id=binding["_id"], code=binding["code"],
        bound_at=binding["bound_at"], channel=binding["channel"], device_id=binding.get("device_id"),
        source_event_id=binding.get("source_event_id")), "referral.bound", binding["_id"])


async def _binding_settled(deps: Deps, binding: Document) -> Document:
    """Finish what a crashed earlier attempt may have left: its qualification."""
    await try_qualify(deps, binding["_id"])
    return binding


async def binding_status(deps: Deps, binding: Document) -> ReferralStatus:
    review = await deps.store.review_of(binding["_id"]) if binding.get("flagged") else None
    entries = await deps.store.ledger_entries_for([binding["_id"]])
    kinds = {e["kind"] for e in entries}
    return referral_status(flagged=bool(binding.get("flagged")), decision=review["decision"] if review else None,
                           qualified="qualified" in kinds, disqualified="disqualified" in kinds)


# ------------------------------------------------------------------ review


async def review(deps: Deps, invitee_id: str, decision: Decision, reviewer_id: str) -> tuple[Document, Document]:
    """An operator's decision on a flagged binding, once. Approval announces the binding that was held
    back and lets the referral continue as if it had never been flagged (a qualifying order that came
    meanwhile qualifies now)."""
    binding = await deps.store.binding_of(invitee_id)
    if binding is None:
        raise LookupError(invitee_id)
    if not binding.get("flagged"):
        raise ReviewConflict("not_flagged", "this binding was not flagged for review")
    document: Document = {"_id": invitee_id, "decision": decision, "reviewer_id": reviewer_id,
                          "inviter_id": binding["inviter_id"], "reviewed_at": deps.now()}
    with_outbox(document, [_bound_event(deps, binding)] if decision == "approve" else [])
    if await deps.store.insert_review(document):
        await deps.outbox.flush_quietly(REVIEWS, document)
    else:
        existing = await deps.store.review_of(invitee_id)
        assert existing is not None
        if existing["decision"] != decision:
            raise ReviewConflict("already_reviewed", f"this binding was already decided: {existing['decision']}")
        document = existing
    if decision == "approve":
        await try_qualify(deps, invitee_id)
    return binding, document


# ------------------------------------------------------------------ qualification ledger


def _state_of(entry: Document | None) -> LedgerState:
    if entry is None:
        return LedgerState()
    return LedgerState(int(entry["seq"]), int(entry["qualified_count"]), frozenset(entry.get("milestones", [])))


async def try_qualify(deps: Deps, invitee_id: str) -> Document | None:
    """Qualify the referral with the invitee's first order of at least the minimum amount completed
    at or after the binding time, if the binding is active (not flagged, or approved)."""
    store = deps.store
    binding = await store.binding_of(invitee_id)
    if binding is None:
        return None  # an order before any binding: recorded, qualifies nothing
    review_doc = await store.review_of(invitee_id) if binding.get("flagged") else None
    if not is_active(bool(binding.get("flagged")), review_doc["decision"] if review_doc else None):
        return None  # held back until an operator approves
    entry = await store.ledger_entry(f"q:{invitee_id}")
    if entry is None:
        order = await store.earliest_qualifying_order(invitee_id, binding["bound_at"],
                                                      deps.settings.qualifying_min_amount)
        if order is None:
            return None
        active_since = review_doc["reviewed_at"] if review_doc else binding["bound_at"]
        qualified_at = max(order["completed_at"], active_since)
        inviter_id = binding["inviter_id"]

        def build(last: Document | None) -> Document:
            step = next_state(_state_of(last), +1, deps.thresholds)
            count = step.state.qualified_count
            events = [deps.event(s.ReferralQualified(
                inviter_id=inviter_id, invitee_id=invitee_id, order_id=order["_id"], qualified_count=count,
                qualified_at=qualified_at, source_event_id=order["source_event_id"]),
                "referral.qualified", invitee_id)]
            events += [deps.event(s.ReferralMilestoneReached(
                inviter_id=inviter_id, milestone=name, qualified_count=count,
                reached_at=qualified_at, source_event_id=order["source_event_id"]),
                "referral.milestone_reached", inviter_id, name) for name in step.newly_reached]
            return with_outbox({
                "seq": step.state.seq, "kind": "qualified", "delta": 1, "invitee_id": invitee_id,
                "order_id": order["_id"], "qualified_count": count, "milestones": sorted(step.state.milestones),
                "newly_reached": list(step.newly_reached), "at": qualified_at,
                "source_event_id": order["source_event_id"]}, events)

        entry, inserted = await store.append_to_ledger(inviter_id, f"q:{invitee_id}", build)
        if inserted:
            metrics.LEDGER_STEPS.labels("qualified").inc()
            metrics.QUALIFICATIONS.inc()
            for name in entry["newly_reached"]:
                metrics.MILESTONES.labels(name).inc()
            await deps.outbox.flush_quietly(LEDGER, entry)
    # A full refund of the qualifying order may already be known (it arrived first, or during review).
    await try_disqualify(deps, invitee_id)
    return entry


async def try_disqualify(deps: Deps, invitee_id: str) -> Document | None:
    """A full refund of the qualifying order within the hold after qualification disqualifies it."""
    store = deps.store
    qualification = await store.ledger_entry(f"q:{invitee_id}")
    if qualification is None:
        return None
    refund = await store.full_refund_of(qualification["order_id"])
    if refund is None:
        return None
    hold = timedelta(days=deps.settings.qualification_hold_days)
    if refund["refunded_at"] > qualification["at"] + hold:
        return None  # the hold had passed: the referral stays qualified
    inviter_id = qualification["inviter_id"]

    def build(last: Document | None) -> Document:
        step = next_state(_state_of(last), -1, deps.thresholds)
        event = deps.event(s.ReferralDisqualified(
            inviter_id=inviter_id, invitee_id=invitee_id, order_id=qualification["order_id"],
            reason=FULL_REFUND_REASON, qualified_count=step.state.qualified_count,
            disqualified_at=refund["refunded_at"], source_event_id=refund["source_event_id"]),
            "referral.disqualified", invitee_id)
        return with_outbox({
            "seq": step.state.seq, "kind": "disqualified", "delta": -1, "invitee_id": invitee_id,
            "order_id": qualification["order_id"], "qualified_count": step.state.qualified_count,
            "milestones": sorted(step.state.milestones), "newly_reached": [], "at": refund["refunded_at"],
            "source_event_id": refund["source_event_id"]}, [event])

    entry, inserted = await store.append_to_ledger(inviter_id, f"d:{invitee_id}", build)
    if inserted:
        metrics.LEDGER_STEPS.labels("disqualified").inc()
        metrics.DISQUALIFICATIONS.inc()
        await deps.outbox.flush_quietly(LEDGER, entry)
    return entry


# ------------------------------------------------------------------ views


async def my_referrals(deps: Deps, user_id: str, limit: int = 1000) -> dict[str, Any]:
    store = deps.store
    bindings = await store.bindings_of_inviter(user_id, limit=limit)
    ids = [b["_id"] for b in bindings]
    reviews = await store.reviews_of(ids) if ids else {}
    entries = await store.ledger_entries_for(ids) if ids else []
    qualified_at = {e["invitee_id"]: e["at"] for e in entries if e["kind"] == "qualified"}
    disqualified = {e["invitee_id"] for e in entries if e["kind"] == "disqualified"}
    last = await store.last_ledger_entry(user_id)
    state = _state_of(last)
    progress = next_milestone(state.qualified_count, deps.thresholds)
    invitees = []
    for binding in bindings:
        invitee = binding["_id"]
        review_doc = reviews.get(invitee)
        status = referral_status(flagged=bool(binding.get("flagged")),
                                 decision=review_doc["decision"] if review_doc else None,
                                 qualified=invitee in qualified_at, disqualified=invitee in disqualified)
        invitees.append({"invitee": mask_id(invitee), "status": status.value, "bound_at": binding["bound_at"],
                         "qualified_at": qualified_at.get(invitee)})
    ordered = sorted(state.milestones, key=lambda name: deps.thresholds.get(name, 0))
    return {
        "qualified_count": state.qualified_count,
        "milestones_reached": ordered,
        "next_milestone": None if progress is None else {
            "milestone": progress.milestone, "at": progress.at, "remaining": progress.remaining},
        "invitees": invitees,
    }


async def leaderboard(deps: Deps, period: Period, caller_id: str) -> dict[str, Any]:
    """Top inviters by invites qualified in the period and not disqualified since."""
    since = period_start(period, deps.now())
    qualifications = await deps.store.qualifications_since(since)
    disqualified = await deps.store.disqualified_among([q["invitee_id"] for q in qualifications]) \
        if qualifications else set()
    counts: dict[str, int] = {}
    latest: dict[str, datetime] = {}
    for q in qualifications:
        if q["invitee_id"] in disqualified:
            continue
        inviter = q["inviter_id"]
        counts[inviter] = counts.get(inviter, 0) + 1
        latest[inviter] = max(latest.get(inviter, q["at"]), q["at"])
    # Ties: whoever got there first ranks higher.
    ranked = sorted(counts, key=lambda inviter: (-counts[inviter], latest[inviter], inviter))
    return {"period": period, "since": since, "entries": [
        {"rank": rank, "inviter": mask_id(inviter), "qualified_invites": counts[inviter],
         "is_you": inviter == caller_id}
        for rank, inviter in enumerate(ranked[: deps.settings.leaderboard_size], start=1)]}


async def flagged(deps: Deps, limit: int = 500) -> list[dict[str, Any]]:
    bindings = await deps.store.flagged_bindings(limit=limit)
    reviews = await deps.store.reviews_of([b["_id"] for b in bindings]) if bindings else {}
    return [{
        "invitee_id": b["_id"], "inviter_id": b["inviter_id"], "code": b["code"], "channel": b["channel"],
        "reasons": b.get("flag_reasons", []), "bound_at": b["bound_at"], "device_id": b.get("device_id"),
        "ip": b.get("ip"), "status": ReferralStatus.UNDER_REVIEW.value,
    } for b in bindings if b["_id"] not in reviews]
