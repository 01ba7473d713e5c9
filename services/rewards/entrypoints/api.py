"""REST API of the rewards service: coupons, redemptions, commissions, withdrawals, refusals."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.rewards import handlers
from services.rewards.adapters.store import coupon_from, ledger_state_from, state_from
from services.rewards.domain import coupons as coupon_rules
from services.rewards.domain import ledger as ledger_rules
from services.rewards.handlers import Deps
from shared.auth import Admin, CurrentUser, ServiceCaller
from shared.errors import ERROR_RESPONSES, ApiError
from shared.events.envelope import NO_NUL, Id, Money, SignedMoney, UtcDatetime, new_event_id
from shared.events.schemas import CouponCode
from shared.idempotency import HEADER
from shared.mongo import Document
from shared.runtime import runtime_of

CouponStatus = Literal["available", "reserved", "redeemed", "expired", "revoked"]


class CouponView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "code": "PWK3J5QZ4XH7N2AB", "kind": "amount_off", "value": 2000, "threshold": 5000, "currency": "CNY",
        "status": "available", "issued_at": "2026-11-21T10:00:00Z", "expires_at": "2026-11-28T10:00:00Z",
        "rule": "welcome_coupon", "order_id": None, "reserved_until": None}]})

    code: str
    kind: str
    value: Money = Field(description="minor units off (0 for free shipping: the whole shipping fee)")
    threshold: Money = Field(description="the order amount needed to use it (0: none)")
    currency: str = "CNY"
    status: CouponStatus
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    rule: str
    order_id: str | None = Field(None, description="the order holding or having used it")
    reserved_until: UtcDatetime | None = None


class CouponList(BaseModel):
    coupons: list[CouponView]


class RedemptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"order_id": "o-1001", "user_id": "alice", "order_amount": 6800}]})

    order_id: Id
    user_id: Id
    order_amount: Money


class Balances(BaseModel):
    pending: int = Field(description="credits still on hold")
    available: int = Field(description="withdrawable now; negative after a reversal of withdrawn money")
    withdrawn: int
    balance: int = Field(description="pending + available: the sum of every ledger entry")


class EntrySource(BaseModel):
    model_config = ConfigDict(extra="allow")

    rule: str
    source_event_id: str | None = None
    reward_id: str | None = None


class LedgerEntryView(BaseModel):
    entry_id: str
    seq: int
    kind: Literal["credit", "reversal", "withdrawal"]
    amount: SignedMoney
    balance_after: SignedMoney
    status: Literal["pending", "available", "reversed", "done"] = Field(
        description="credits: pending until the hold ends, then available; reversed if taken back")
    available_at: UtcDatetime | None = None
    at: UtcDatetime
    source: EntrySource


class Commissions(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "currency": "CNY", "balances": {"pending": 500, "available": 1000, "withdrawn": 1000, "balance": 1500},
        "entries": [{"entry_id": "alice:4", "seq": 4, "kind": "credit", "amount": 500, "balance_after": 1500,
                     "status": "pending", "available_at": "2026-11-28T10:00:00Z", "at": "2026-11-21T10:00:01Z",
                     "source": {"rule": "expert_commission", "source_event_id": "8f0c…",
                                "reward_id": "expert_commission:8f0c…:alice"}}]}]})

    currency: str = "CNY"
    balances: Balances
    entries: list[LedgerEntryView]


class WithdrawalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount": 1000}]})

    amount: Money


class Withdrawal(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "withdrawal_id": "5d0c…", "amount": 1000, "currency": "CNY", "status": "requested",
        "requested_at": "2026-11-29T08:00:00Z",
        "balances": {"pending": 0, "available": 500, "withdrawn": 1000, "balance": 500}}]})

    withdrawal_id: str
    amount: Money
    currency: str = "CNY"
    status: Literal["requested"] = "requested"
    requested_at: UtcDatetime
    balances: Balances


class Refusal(BaseModel):
    reward_id: str
    rule: str
    beneficiary: str
    source_event_id: str
    value: int
    reason: str = Field(description="e.g. budget_exceeded:day:2026-11-21")
    at: UtcDatetime


class RefusalList(BaseModel):
    refusals: list[Refusal]


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.rewards_deps
    return deps


def _raise(refusal: coupon_rules.Refusal | ledger_rules.Refusal) -> NoReturn:
    raise ApiError(refusal.status, refusal.code, refusal.message)


def coupon_view(doc: Document, state: coupon_rules.CouponState, deps: Deps, now: datetime) -> CouponView:
    coupon = coupon_from(doc)
    status = coupon_rules.status_at(coupon, state, now, deps.reservation_ttl)
    reserved_until = (state.reserved_at + deps.reservation_ttl
                      if status == "reserved" and state.reserved_at is not None else None)
    return CouponView(code=coupon.code, kind=coupon.kind, value=coupon.value, threshold=coupon.threshold,
                      status=status, issued_at=coupon.issued_at, expires_at=coupon.expires_at, rule=doc["rule"],
                      order_id=state.order_id if status in ("reserved", "redeemed") else None,
                      reserved_until=reserved_until)


def _entry_view(doc: Document, reversed_refs: set[str], now: datetime) -> LedgerEntryView:
    status: Literal["pending", "available", "reversed", "done"] = "done"
    if doc["kind"] == "credit":
        if doc["ref"] in reversed_refs:
            status = "reversed"
        elif doc.get("available_at") is not None and doc["available_at"] > now:
            status = "pending"
        else:
            status = "available"
    return LedgerEntryView(entry_id=doc["_id"], seq=doc["seq"], kind=doc["kind"], amount=doc["amount"],
                           balance_after=doc["balance_after"], status=status,
                           available_at=doc.get("available_at"), at=doc["at"], source=EntrySource(**doc["source"]))


router = APIRouter(responses=ERROR_RESPONSES)
CodePath = Annotated[CouponCode, Path(description="the coupon's code")]


@router.get("/v1/me/coupons", tags=["coupons"], summary="The caller's coupons with their status now")
async def my_coupons(request: Request, caller: CurrentUser,
                     status: Annotated[CouponStatus | None, Query(description="only this status")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000, description="coupons read at most (oldest first)")]
                     = 1000,
                     ) -> CouponList:
    deps = _deps(request)
    docs = await deps.coupons.for_user(caller.user_id, limit=limit)
    # states only for a wallet with coupons: an empty one (a new user, an app polling for a coupon
    # about to arrive) costs one read, not two; each read is ~0.5 ms of the service's CPU
    states = await deps.coupons.states_for_user(caller.user_id) if docs else {}
    now = deps.clock.now()
    views = [coupon_view(d, states.get(d["code"], state_from(None)), deps, now) for d in docs]
    return CouponList(coupons=[v for v in views if status is None or v.status == status])


@router.post(
    "/v1/coupons/{code}/redemptions", tags=["coupons"], status_code=201, response_model=CouponView,
    summary="Checkout (service scope) reserves a coupon for an order",
    description="Reserves the coupon for the order for 30 minutes (default), until an `order.completed` "
                "listing it confirms it. A retry for the same order succeeds again (200); another order "
                "gets 409 `coupon_reserved`. Other refusals: 404 `coupon_not_found`, 403 `coupon_not_owned`, "
                "409 `coupon_expired` / `coupon_redeemed` / `coupon_revoked`, 422 `threshold_not_met`.",
    responses={200: {"model": CouponView, "description": "already reserved for (or redeemed by) this order"}})
async def reserve(request: Request, code: CodePath, body: RedemptionRequest, caller: ServiceCaller) -> Any:
    deps = _deps(request)

    async def produce() -> tuple[int, Any]:
        decision, doc = await handlers.reserve_coupon(code, order_id=body.order_id, user_id=body.user_id,
                                                      order_amount=body.order_amount, deps=deps)
        if isinstance(decision, coupon_rules.Refusal):
            _raise(decision)
        state = decision.state
        status = 201 if isinstance(decision, coupon_rules.Transition) else 200
        return status, coupon_view(doc, state, deps, deps.clock.now())

    return await runtime_of(request.app).idempotency.run(request, caller.user_id, {"code": code, **body.model_dump()},
                                                         produce)


@router.delete(
    "/v1/coupons/{code}/redemptions/{order_id}", tags=["coupons"],
    summary="Checkout (service scope) releases the order's reservation",
    description="The coupon is available again. Repeating it succeeds; 404 `reservation_not_found` if the "
                "coupon was never reserved for that order, 409 `coupon_redeemed` if the order completed.")
async def release(request: Request, code: CodePath, order_id: Annotated[Id, Path()],
                  caller: ServiceCaller) -> CouponView:
    deps = _deps(request)
    decision, doc = await handlers.release_coupon(code, order_id, deps)
    if isinstance(decision, coupon_rules.Refusal):
        _raise(decision)
    return coupon_view(doc, decision.state, deps, deps.clock.now())


@router.get("/v1/me/commissions", tags=["commissions"],
            summary="The caller's commission balances and ledger entries (newest first)")
async def my_commissions(request: Request, caller: CurrentUser,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Commissions:
    deps = _deps(request)
    docs = await deps.ledger.for_user(caller.user_id, limit=limit)
    now = deps.clock.now()
    state = ledger_state_from(docs[0] if docs else None)  # the newest entry carries the running state
    reversed_refs = {d["reverses"] for d in docs if d["kind"] == "reversal" and d.get("reverses")}
    return Commissions(balances=Balances(**handlers.balances(state, now)),
                       entries=[_entry_view(d, reversed_refs, now) for d in docs])


@router.post(
    "/v1/me/withdrawals", tags=["commissions"], status_code=201, response_model=Withdrawal,
    summary="Withdraw from the available commission balance",
    description="Minimum 1000 (default; 422 `below_minimum_withdrawal`); never above the available balance "
                "(409 `insufficient_balance`); refused while a reversal left the balance negative "
                "(409 `balance_negative`). Publishes `rewards.withdrawal_requested`. Send an "
                f"`{HEADER}` to make retries safe.")
async def create_withdrawal(request: Request, body: WithdrawalRequest, caller: CurrentUser) -> Any:
    deps = _deps(request)
    key = request.headers.get(HEADER)
    withdrawal_id = new_event_id("withdrawal", caller.user_id, key) if key else str(uuid.uuid4())

    async def produce() -> tuple[int, Any]:
        decision = await handlers.withdraw(caller.user_id, body.amount, withdrawal_id, deps)
        if isinstance(decision, ledger_rules.Refusal):
            _raise(decision)
        now = deps.clock.now()
        state = await deps.ledger.last(caller.user_id)
        requested_at = decision.at if isinstance(decision, ledger_rules.Entry) else now
        return 201, Withdrawal(withdrawal_id=withdrawal_id, amount=body.amount, requested_at=requested_at,
                               balances=Balances(**handlers.balances(state, now)))

    return await runtime_of(request.app).idempotency.run(request, caller.user_id, body.model_dump(), produce)


@router.get("/v1/rewards/refusals", tags=["operators"],
            summary="Rewards refused (over budget), newest first (admin scope)")
async def refusals(request: Request, _: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   rule: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None) -> RefusalList:
    deps = _deps(request)
    docs = await deps.refusals.recent(limit, rule)
    return RefusalList(refusals=[Refusal(reward_id=d["_id"], **{k: d[k] for k in (
        "rule", "beneficiary", "source_event_id", "value", "reason", "at")}) for d in docs])
