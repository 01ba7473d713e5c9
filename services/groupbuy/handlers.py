"""Use cases of the group-buy service: small functions over the store, the outbox and the clock.

Each state change is a unique-key insert carrying its events (same-document outbox); the decisions
themselves come from ``domain``. See ``domain/group.py`` for the seat-key scheme and the lifecycle.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter

from services.groupbuy.adapters import store as st
from services.groupbuy.adapters.store import GroupbuyStore
from services.groupbuy.domain.campaign import CampaignRules, TierRule, validate_campaign
from services.groupbuy.domain.group import (
    GroupDecision,
    Seat,
    SeatOutcome,
    decide_group,
    judge_payment,
    live_seats,
    paid_seats,
    seat_key,
    seat_of,
    seat_status,
    slot_candidates,
)
from services.groupbuy.settings import GroupbuySettings
from shared.clock import Clock
from shared.errors import ApiError
from shared.events import schemas as s
from shared.events.envelope import CloudEvent, new_event_id
from shared.kafka import make_event
from shared.mongo import Document
from shared.outbox import OutboxRelay, with_outbox

JOINS = Counter("pinwheel_groupbuy_joins_total", "Seat requests by outcome", ["outcome"])
PAYMENTS = Counter("pinwheel_groupbuy_payments_total", "Group payments by verdict", ["verdict"])
GROUPS_CLOSED = Counter("pinwheel_groupbuy_groups_closed_total", "Groups decided", ["outcome"])
SEATS_RELEASED = Counter("pinwheel_groupbuy_seats_released_total", "Seats released", ["reason"])
# The names the Grafana dashboard reads (deploy/grafana/METRICS.md), counted once per decision.
GROUPS_OPENED = Counter("pinwheel_groupbuy_groups_opened_total", "Groups opened")
GROUPS_FORMED = Counter("pinwheel_groupbuy_groups_formed_total", "Groups formed")
GROUPS_FAILED = Counter("pinwheel_groupbuy_groups_failed_total", "Groups failed")


def to_millis(when: datetime) -> datetime:
    """The store keeps milliseconds; deciding on the same precision avoids off-by-microsecond surprises."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def mask_user(user_id: str) -> str:
    if len(user_id) <= 2:
        return user_id[0] + "*"
    return f"{user_id[0]}***{user_id[-1]}"


def stock_scope(campaign_id: str) -> str:
    return f"stock|{campaign_id}"


def user_scope(campaign_id: str, user_id: str) -> str:
    return f"user|{campaign_id}|{user_id}"


def tier_doc(tier: TierRule) -> dict[str, Any]:
    return {"size": tier.size, "percent_off": tier.percent_off, "amount_off": tier.amount_off}


def rules_from_doc(doc: Document) -> CampaignRules:
    return CampaignRules(
        campaign_id=doc["_id"], sku=doc["sku"], list_price=doc["list_price"],
        tiers=tuple(TierRule(t["size"], t.get("percent_off"), t.get("amount_off")) for t in doc["tiers"]),
        starts_at=doc["starts_at"], ends_at=doc["ends_at"], stock=doc["stock"],
        group_window=timedelta(minutes=doc["group_window_minutes"]),
        seat_payment_window=timedelta(minutes=doc["seat_payment_minutes"]),
        per_user_limit=doc.get("per_user_limit"), new_users_only=doc.get("new_users_only", False),
        auto_complete_min=doc.get("auto_complete_min"),
    )


@dataclass(frozen=True)
class CampaignDraft:
    campaign_id: str | None
    sku: str
    product_name: str | None
    list_price: int
    tiers: list[TierRule]
    starts_at: datetime
    ends_at: datetime
    stock: int
    group_window_minutes: int | None
    seat_payment_minutes: int | None
    per_user_limit: int | None
    new_users_only: bool
    auto_complete_min: int | None
    reward_budget: int | None


class Groupbuy:
    """The service's use cases; one instance per process, built in ``bootstrap``."""

    def __init__(self, store: GroupbuyStore, outbox: OutboxRelay, clock: Clock, settings: GroupbuySettings,
                 source: str) -> None:
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.settings = settings
        self.source = source
        self.grace = timedelta(seconds=settings.settle_grace_seconds)
        # Campaigns never change after creation, so a process may keep the ones it has read.
        self._campaigns: dict[str, tuple[Document, CampaignRules]] = {}

    def now(self) -> datetime:
        return to_millis(self.clock.now())

    def _event(self, data: Any, *parts: str) -> CloudEvent[Any]:
        return make_event(data, source=self.source, event_id=new_event_id("groupbuy", *parts))

    # ================================================================== campaigns
    async def create_campaign(self, draft: CampaignDraft, operator: str) -> Document:
        group_window = draft.group_window_minutes or self.settings.group_window_minutes
        seat_window = draft.seat_payment_minutes or self.settings.seat_payment_minutes
        problems = validate_campaign(
            list_price=draft.list_price, tiers=draft.tiers, starts_at=draft.starts_at, ends_at=draft.ends_at,
            stock=draft.stock, group_window=timedelta(minutes=group_window),
            seat_payment_window=timedelta(minutes=seat_window), per_user_limit=draft.per_user_limit,
            auto_complete_min=draft.auto_complete_min)
        if problems:
            raise ApiError(422, problems[0].code, problems[0].message,
                           [{"code": p.code, "message": p.message} for p in problems])
        doc: Document = {
            "_id": draft.campaign_id or f"c-{uuid.uuid4().hex[:16]}", "sku": draft.sku,
            "product_name": draft.product_name, "list_price": draft.list_price, "currency": "CNY",
            "tiers": [tier_doc(t) for t in draft.tiers], "starts_at": to_millis(draft.starts_at),
            "ends_at": to_millis(draft.ends_at), "stock": draft.stock, "group_window_minutes": group_window,
            "seat_payment_minutes": seat_window, "per_user_limit": draft.per_user_limit,
            "new_users_only": draft.new_users_only, "auto_complete_min": draft.auto_complete_min,
            "reward_budget": draft.reward_budget, "created_by": operator, "created_at": self.now(),
        }
        if not await self.store.insert_campaign(doc):
            raise ApiError(409, "campaign_exists", f"campaign {doc['_id']} exists already")
        return await self.campaign_view(doc["_id"])

    async def _campaign(self, campaign_id: str) -> tuple[Document, CampaignRules]:
        cached = self._campaigns.get(campaign_id)
        if cached is not None:
            return cached
        doc = await self.store.campaign(campaign_id)
        if doc is None:
            raise ApiError(404, "campaign_not_found", f"campaign {campaign_id} not found")
        if len(self._campaigns) > 10_000:
            self._campaigns.clear()
        self._campaigns[campaign_id] = (doc, rules_from_doc(doc))
        return self._campaigns[campaign_id]

    async def campaign_view(self, campaign_id: str) -> Document:
        doc, rules = await self._campaign(campaign_id)
        in_use = await self.store.in_use(stock_scope(campaign_id))
        view = {k: v for k, v in doc.items() if k not in ("_id", "created_by")}
        view["campaign_id"] = doc["_id"]
        view["tiers"] = [{**t, "price": rules.price_at(TierRule(t["size"], t.get("percent_off"),
                                                                t.get("amount_off")))} for t in doc["tiers"]]
        view["stock_left"] = max(0, rules.stock - in_use)
        view["active"] = rules.is_active(self.now())
        return view

    # ================================================================== opening and joining
    def _check_can_take_seat(self, rules: CampaignRules, now: datetime) -> None:
        if not rules.is_active(now):
            raise ApiError(409, "campaign_not_active", "the campaign is not running now",
                           {"starts_at": rules.starts_at.isoformat(), "ends_at": rules.ends_at.isoformat()})

    async def _check_new_user(self, rules: CampaignRules, user_id: str) -> None:
        if rules.new_users_only and await self.store.is_buyer(user_id):
            raise ApiError(403, "new_users_only", "this campaign is for users without a previous completed order")

    async def _claim_quotas(self, rules: CampaignRules, user_id: str, holder: str) -> None:
        """The per-user limit, then one unit of stock, both held by the seat; refused with a clear code."""
        campaign_id = rules.campaign_id
        if rules.per_user_limit is not None and not await self.store.claim(
                user_scope(campaign_id, user_id), rules.per_user_limit, holder):
            raise ApiError(409, "per_user_limit_reached",
                           f"you already joined {rules.per_user_limit} group(s) of this campaign")
        if not await self.store.claim(stock_scope(campaign_id), rules.stock, holder):
            await self.store.give_back(user_scope(campaign_id, user_id), holder)
            raise ApiError(409, "out_of_stock", "no units are left at the group price")

    async def _give_back_quotas(self, campaign_id: str, user_id: str, holder: str) -> None:
        await self.store.give_back(stock_scope(campaign_id), holder)
        await self.store.give_back(user_scope(campaign_id, user_id), holder)

    async def open_group(self, campaign_id: str, user_id: str) -> Document:
        now = self.now()
        _, rules = await self._campaign(campaign_id)
        self._check_can_take_seat(rules, now)
        await self._check_new_user(rules, user_id)
        group_id = f"g-{uuid.uuid4().hex[:16]}"
        deadline = rules.group_deadline(now)
        seat = Seat(seat_key(group_id, 1, 1), group_id, 1, 1, user_id, now,
                    min(now + rules.seat_payment_window, deadline))
        await self._claim_quotas(rules, user_id, seat.seat_id)
        await self.store.insert_member(group_id, user_id, seat.seat_id, now)
        await self.store.insert_seat(st.seat_to_doc(seat, campaign_id))
        await self.store.insert_join({"_id": seat.seat_id, "group_id": group_id, "user_id": user_id, "at": now})
        opened = self._event(s.GroupOpened(group_id=group_id, campaign_id=campaign_id, initiator_id=user_id,
                                           deadline=deadline, opened_at=now), "group_opened", group_id)
        joined = self._joined_event(seat, campaign_id)
        group_doc = with_outbox({"_id": group_id, "campaign_id": campaign_id, "initiator_id": user_id,
                                 "opened_at": now, "deadline": deadline, "max_seats": rules.max_seats,
                                 "status": "open"}, [opened, joined])
        await self.store.insert_group(group_doc)
        await self.outbox.flush_quietly(st.GROUPS, group_doc)
        JOINS.labels("opened").inc()
        GROUPS_OPENED.inc()
        return await self.group_view(group_id, user_id)

    def _joined_event(self, seat: Seat, campaign_id: str) -> CloudEvent[Any]:
        return self._event(s.MemberJoined(group_id=seat.group_id, campaign_id=campaign_id, user_id=seat.user_id,
                                          seat=seat.slot, seat_payment_deadline=seat.payment_deadline,
                                          joined_at=seat.joined_at), "member_joined", seat.seat_id)

    async def join_group(self, group_id: str, user_id: str) -> Document:
        try:
            view = await self._join_group(group_id, user_id)
        except ApiError as refusal:
            JOINS.labels(refusal.code).inc()
            raise
        JOINS.labels("joined").inc()
        return view

    async def _join_group(self, group_id: str, user_id: str) -> Document:
        now = self.now()
        group = await self._group(group_id)
        campaign_id = group["campaign_id"]
        _, rules = await self._campaign(campaign_id)
        if group["status"] != "open" or now >= group["deadline"]:
            raise ApiError(410, "group_closed", "this group is closed", {"status": group["status"]})
        self._check_can_take_seat(rules, now)
        # three independent reads in one round-trip time (a refused join is decided by them alone)
        member, seats, outcomes = await asyncio.gather(
            self.store.is_member(group_id, user_id), self.store.seats(group_id), self.store.seat_outcomes(group_id))
        if member:
            raise ApiError(409, "already_member", "you already hold (or held) a seat in this group")
        await self._check_new_user(rules, user_id)
        candidates = slot_candidates(rules.max_seats, seats, outcomes)
        if not candidates:
            raise ApiError(409, "group_full", "every seat of this group is taken")
        attempt = uuid.uuid4().hex
        if not await self.store.insert_member(group_id, user_id, attempt, now):
            raise ApiError(409, "already_member", "you already hold (or held) a seat in this group")
        seat: Seat | None = None
        payment_deadline = min(now + rules.seat_payment_window, group["deadline"])
        for slot, generation in candidates:
            candidate = Seat(seat_key(group_id, slot, generation), group_id, slot, generation, user_id, now,
                             payment_deadline)
            if await self.store.insert_seat(st.seat_to_doc(candidate, campaign_id)):
                seat = candidate
                break
        if seat is None:
            await self.store.drop_member(group_id, user_id, attempt)
            raise ApiError(409, "group_full", "every seat of this group is taken")
        try:
            await self._claim_quotas(rules, user_id, seat.seat_id)
            if await self.store.group_outcome(group_id) is not None:
                raise ApiError(410, "group_closed", "this group closed while you were joining")
        except ApiError:
            await self.release_seat(seat, campaign_id, "join_refused")
            await self.store.drop_member(group_id, user_id, attempt)
            raise
        join_doc = with_outbox({"_id": seat.seat_id, "group_id": group_id, "user_id": user_id, "at": now},
                               [self._joined_event(seat, campaign_id)])
        await self.store.insert_join(join_doc)
        await self.outbox.flush_quietly(st.JOINS, join_doc)
        return await self.group_view(group_id, user_id)

    async def release_seat(self, seat: Seat, campaign_id: str, reason: str) -> SeatOutcome | None:
        """Release a held seat (unless its payment won the race) and give its units back. Idempotent."""
        now = self.now()
        announce = reason != "join_refused"
        events = [self._event(s.SeatReleased(group_id=seat.group_id, campaign_id=campaign_id, user_id=seat.user_id,
                                             seat=seat.slot, reason=reason, released_at=now),
                              "seat_released", seat.seat_id)] if announce else []
        doc = with_outbox({"_id": seat.seat_id, "group_id": seat.group_id, "campaign_id": campaign_id,
                           "user_id": seat.user_id, "slot": seat.slot, "outcome": "released", "reason": reason,
                           "decided_at": now}, events)
        if await self.store.insert_seat_outcome(doc):
            SEATS_RELEASED.labels(reason).inc()
            await self.outbox.flush_quietly(st.SEAT_OUTCOMES, doc)
        outcome = await self.store.seat_outcome(seat.seat_id)
        if outcome is not None and outcome.outcome == "released":
            await self._give_back_quotas(campaign_id, seat.user_id, seat.seat_id)
        if outcome is not None:
            await self.store.set_seat_state(seat.seat_id, outcome.outcome)
        return outcome

    # ================================================================== payments (orders.events)
    async def on_order_completed(self, event: CloudEvent[s.OrderCompleted]) -> None:
        order = event.data
        await self.store.record_buyer(order.user_id, order.order_id, order.completed_at)
        if order.group_id is None:
            return
        group = await self.store.group(order.group_id)
        if group is None:
            await self._reject(order, event.id, "unknown_group")
            PAYMENTS.labels("unknown_group").inc()
            return
        await self._take_payment(group, order, event.id)

    async def _take_payment(self, group: Document, order: s.OrderCompleted, source_event_id: str) -> None:
        group_id, campaign_id = group["_id"], group["campaign_id"]
        late = False
        for _ in range(3):  # a lost insert race is judged again on what won it
            seats, outcomes = await self.store.seats(group_id), await self.store.seat_outcomes(group_id)
            seat = seat_of(order.user_id, seats)
            outcome = outcomes.get(seat.seat_id) if seat else None
            group_outcome = await self.store.group_outcome(group_id)
            verdict = judge_payment(seat=seat, outcome=outcome, order_id=order.order_id,
                                    completed_at=to_millis(order.completed_at), group_closed=group_outcome is not None)
            PAYMENTS.labels(verdict.reason or verdict.action).inc()
            if verdict.action == "duplicate":
                await self._after_payment(group, order, source_event_id)
                return
            if verdict.action == "reject":
                reason = "payment_window_expired" if late and verdict.reason == "seat_released" else verdict.reason
                await self._reject(order, source_event_id, reason or "rejected")
                return
            assert seat is not None
            if verdict.action == "release_first":
                await self.release_seat(seat, campaign_id, "payment_window_expired")
                late = True
                continue  # judged again: released (reject) or, had the payment won, duplicate
            now = self.now()
            paid = self._event(s.MemberPaid(group_id=group_id, campaign_id=campaign_id, user_id=seat.user_id,
                                            seat=seat.slot, order_id=order.order_id, paid_at=order.completed_at,
                                            source_event_id=source_event_id), "member_paid", seat.seat_id)
            doc = with_outbox({"_id": seat.seat_id, "group_id": group_id, "campaign_id": campaign_id,
                               "user_id": seat.user_id, "slot": seat.slot, "outcome": "paid",
                               "order_id": order.order_id, "amount": order.amount,
                               "source_event_id": source_event_id, "decided_at": now}, [paid])
            if await self.store.insert_seat_outcome(doc):
                await self.store.set_seat_state(seat.seat_id, "paid")
                await self.outbox.flush_quietly(st.SEAT_OUTCOMES, doc)
                await self._after_payment(group, order, source_event_id)
                return
        raise RuntimeError(f"payment {order.order_id} not settled after 3 rounds")  # redelivered by Kafka

    async def _after_payment(self, group: Document, order: s.OrderCompleted, source_event_id: str) -> None:
        """A paid seat either belongs to the group's outcome, forms the group (largest tier filled) or,
        when the group closed without it (a payment racing the deadline), is rejected for refund."""
        outcome = await self.store.group_outcome(group["_id"])
        if outcome is None:
            _, rules = await self._campaign(group["campaign_id"])
            seats, outcomes = await self.store.seats(group["_id"]), await self.store.seat_outcomes(group["_id"])
            decision = decide_group(rules, paid_seats(seats, outcomes), outcomes, deadline_reached=False)
            if decision is not None:
                await self._decide(group, rules, decision)
            return
        if order.order_id not in self._accounted(outcome):
            await self.finalize(group["_id"])  # rejects it and gives its units back

    @staticmethod
    def _accounted(outcome: Document) -> set[str]:
        return {m["order_id"] for m in outcome.get("members", [])} | set(outcome.get("refund_order_ids", []))

    async def _reject(self, order: s.OrderCompleted | SeatOutcome, source_event_id: str, reason: str,
                      user_id: str | None = None, group_id: str | None = None) -> None:
        order_id = order.order_id or ""
        now = self.now()
        data = s.PaymentRejected(order_id=order_id, user_id=user_id or getattr(order, "user_id", ""),
                                 group_id=group_id or getattr(order, "group_id", "") or "", reason=reason,
                                 amount=order.amount, rejected_at=now, source_event_id=source_event_id)
        doc = with_outbox({"_id": order_id, "group_id": data.group_id, "user_id": data.user_id, "reason": reason,
                           "decided_at": now}, [self._event(data, "payment_rejected", order_id)])
        if await self.store.insert_rejection(doc):
            await self.outbox.flush_quietly(st.REJECTIONS, doc)

    # ================================================================== group outcome
    async def _decide(self, group: Document, rules: CampaignRules, decision: GroupDecision) -> None:
        """Insert the group's one outcome (a lost race is fine: the winner's stands), then finalize."""
        now = self.now()
        group_id = group["_id"]
        members = [{"user_id": m.user_id, "seat": m.seat, "order_id": m.order_id, "price": m.price}
                   for m in decision.members]
        if decision.outcome == "formed":
            assert decision.tier is not None
            tier = decision.tier
            data: Any = s.GroupFormed(
                group_id=group_id, campaign_id=rules.campaign_id, initiator_id=group["initiator_id"],
                tier=s.Tier(size=tier.size, percent_off=tier.percent_off, amount_off=tier.amount_off),
                list_price=rules.list_price, members=[s.FormedMember(**m) for m in members], formed_at=now)
            event = self._event(data, "group_formed", group_id)
        else:
            seats, outcomes = await self.store.seats(group_id), await self.store.seat_outcomes(group_id)
            by_order = {o.order_id: o for o in outcomes.values() if o.outcome == "paid"}
            users = {seat.seat_id: seat.user_id for seat in seats}
            paid_members = [s.PaidMember(user_id=users.get(o.seat_id, ""), order_id=order_id, amount=o.amount)
                            for order_id, o in by_order.items() if order_id in decision.refund_order_ids]
            data = s.GroupFailed(group_id=group_id, campaign_id=rules.campaign_id, initiator_id=group["initiator_id"],
                                 reason=decision.reason, refund_order_ids=list(decision.refund_order_ids),
                                 paid_members=paid_members, failed_at=now)
            event = self._event(data, "group_failed", group_id)
        doc = with_outbox({"_id": group_id, "campaign_id": rules.campaign_id, "outcome": decision.outcome,
                           "reason": decision.reason, "tier": tier_doc(decision.tier) if decision.tier else None,
                           "members": members, "refund_order_ids": list(decision.refund_order_ids),
                           "decided_at": now, "finalized": False}, [event])
        if await self.store.insert_group_outcome(doc):
            GROUPS_CLOSED.labels(decision.outcome).inc()
            (GROUPS_FORMED if decision.outcome == "formed" else GROUPS_FAILED).inc()
            await self.outbox.flush_quietly(st.GROUP_OUTCOMES, doc)
        await self.finalize(group_id)

    async def finalize(self, group_id: str) -> None:
        """After the outcome: reject paid seats it does not account for (payments that raced the
        decision), release unpaid seats, give a failed group's units back, update the caches.
        Idempotent; read strictly after the outcome insert, so no paid seat slips through."""
        outcome = await self.store.group_outcome(group_id)
        if outcome is None:
            return
        campaign_id = outcome["campaign_id"]
        accounted = self._accounted(outcome)
        seats, outcomes = await self.store.seats(group_id), await self.store.seat_outcomes(group_id)
        for seat in seats:
            status = seat_status(seat, outcomes)
            if status == "held":
                await self.release_seat(seat, campaign_id, "group_closed")
            elif status == "paid" and outcomes[seat.seat_id].order_id not in accounted:
                paid = outcomes[seat.seat_id]
                await self._reject(paid, paid.source_event_id or paid.seat_id, "group_closed",
                                   user_id=seat.user_id, group_id=group_id)
                await self._give_back_quotas(campaign_id, seat.user_id, seat.seat_id)
        if outcome["outcome"] == "failed":
            for seat in seats:
                await self._give_back_quotas(campaign_id, seat.user_id, seat.seat_id)
        await self.store.set_group_status(group_id, outcome["outcome"])
        await self.store.mark_finalized(group_id)

    # ================================================================== the scheduler
    async def run_due(self, now: datetime | None = None) -> dict[str, int]:
        """One pass of the scheduler: release seats whose payment window is over, close groups whose
        deadline passed, finish outcomes a crash left unfinished. Safe to run on several replicas at
        once: every step is a unique-key insert or idempotent."""
        now = to_millis(now or self.clock.now())
        cutoff = now - self.grace
        done = {"seats_released": 0, "groups_closed": 0, "finalized": 0}
        for doc in await self.store.due_seats(cutoff, self.settings.scheduler_batch):
            seat = st.seat_from_doc(doc)
            outcome = await self.release_seat(seat, doc["campaign_id"], "payment_window_expired")
            done["seats_released"] += int(outcome is not None and outcome.outcome == "released")
        for group in await self.store.due_groups(cutoff, self.settings.scheduler_batch):
            if await self.store.group_outcome(group["_id"]) is None:
                _, rules = await self._campaign(group["campaign_id"])
                seats, outcomes = await self.store.seats(group["_id"]), await self.store.seat_outcomes(group["_id"])
                decision = decide_group(rules, paid_seats(seats, outcomes), outcomes, deadline_reached=True)
                assert decision is not None
                await self._decide(group, rules, decision)
            else:
                await self.finalize(group["_id"])
            done["groups_closed"] += 1
        for unfinished in await self.store.unfinalized_outcomes(self.settings.scheduler_batch):
            await self.finalize(unfinished["_id"])
            done["finalized"] += 1
        return done

    # ================================================================== views
    async def _group(self, group_id: str) -> Document:
        group = await self.store.group(group_id)
        if group is None:
            raise ApiError(404, "group_not_found", f"group {group_id} not found")
        return group

    async def group_view(self, group_id: str, viewer: str | None = None) -> Document:
        group = await self._group(group_id)
        _, rules = await self._campaign(group["campaign_id"])
        seats, outcomes, outcome = await asyncio.gather(
            self.store.seats(group_id), self.store.seat_outcomes(group_id), self.store.group_outcome(group_id))
        return self._render(group, rules, seats, outcomes, outcome, viewer)

    def _render(self, group: Document, rules: CampaignRules, seats: list[Seat], outcomes: dict[str, SeatOutcome],
                outcome: Document | None, viewer: str | None) -> Document:
        live = live_seats(seats, outcomes)
        paid = [seat for seat in live if seat_status(seat, outcomes) == "paid"]
        status = outcome["outcome"] if outcome else group["status"]
        if outcome and outcome.get("tier"):
            t = outcome["tier"]
            tier: TierRule | None = TierRule(t["size"], t.get("percent_off"), t.get("amount_off"))
        else:
            tier = rules.tier_reached(len(paid))
        price_now = rules.price_at(tier or rules.smallest_tier)
        members = [{
            "user": seat.user_id if seat.user_id == viewer else mask_user(seat.user_id),
            "you": seat.user_id == viewer, "seat": seat.slot, "status": seat_status(seat, outcomes),
            "joined_at": seat.joined_at,
            "payment_deadline": seat.payment_deadline if seat_status(seat, outcomes) == "held" else None,
            "price": price_now,
        } for seat in live]
        return {
            "group_id": group["_id"], "campaign_id": group["campaign_id"], "status": status,
            "initiator": group["initiator_id"] if group["initiator_id"] == viewer else mask_user(group["initiator_id"]),
            "deadline": group["deadline"], "opened_at": group["opened_at"], "max_seats": rules.max_seats,
            "seats_taken": len(live), "seats_paid": len(paid),
            "seats_left": 0 if status != "open" else rules.max_seats - len(live),
            "list_price": rules.list_price, "currency": "CNY",
            "tier_reached": {**tier_doc(tier), "price": rules.price_at(tier)} if tier else None,
            "price_now": price_now,
            "tiers": [{**tier_doc(t), "price": rules.price_at(t)} for t in rules.tiers],
            "members": members,
        }

    async def open_groups_view(self, campaign_id: str, viewer: str) -> list[Document]:
        _, rules = await self._campaign(campaign_id)
        now = self.now()
        limit = self.settings.list_groups_limit
        views = []
        for group in await self.store.open_groups(campaign_id, now, limit * 3):
            seats, outcomes = await self.store.seats(group["_id"]), await self.store.seat_outcomes(group["_id"])
            view = self._render(group, rules, seats, outcomes, None, viewer)
            if view["seats_left"] > 0:
                views.append(view)
            if len(views) >= limit:
                break
        return views
