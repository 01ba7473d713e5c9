"""HTTP API of the group-buy service: operators create campaigns; shoppers open, join and watch groups."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.groupbuy.domain.campaign import TierRule
from services.groupbuy.handlers import CampaignDraft, Groupbuy
from shared.auth import Admin, CurrentUser, Principal
from shared.errors import ERROR_RESPONSES, ErrorBody
from shared.events.envelope import NO_NUL, Money, UtcDatetime
from shared.ratelimit import rate_limited_by_setting

# Opening a group takes a seat too: one window for both, per user.
SeatTaker = Annotated[Principal, rate_limited_by_setting("group_join", "join_rate_limit_per_minute")]
PathId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]

# ------------------------------------------------------------------ request and response models


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: Annotated[int, Field(strict=True, ge=2, le=1000, description="paid members needed")]
    percent_off: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None
    amount_off: Money | None = None

    @model_validator(mode="after")
    def _one_discount(self) -> TierIn:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("give exactly one of percent_off, amount_off")
        return self


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "campaign_id": "c-tea-1121", "sku": "tea-500g", "product_name": "Longjing tea 500 g",
        "list_price": 10000, "currency": "CNY",
        "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
        "starts_at": "2026-11-21T00:00:00Z", "ends_at": "2026-11-28T00:00:00Z", "stock": 300,
        "group_window_minutes": 1440, "seat_payment_minutes": 15, "per_user_limit": 2,
        "new_users_only": False, "auto_complete_min": None, "reward_budget": 50000}]})
    campaign_id: PathId | None = Field(None, description="chosen by the operator; generated when absent")
    sku: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL)]
    product_name: Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)] | None = None
    list_price: Money
    currency: Literal["CNY"] = "CNY"
    tiers: Annotated[list[TierIn], Field(min_length=1, max_length=10)]
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    stock: Annotated[int, Field(strict=True, ge=1, le=10_000_000, description="units sold at group price")]
    group_window_minutes: Annotated[int, Field(strict=True, ge=1, le=43_200)] | None = Field(
        None, description="default GROUPBUY_GROUP_WINDOW_MINUTES (24 h)")
    seat_payment_minutes: Annotated[int, Field(strict=True, ge=1, le=1440)] | None = Field(
        None, description="default GROUPBUY_SEAT_PAYMENT_MINUTES (15 min)")
    per_user_limit: Annotated[int, Field(strict=True, ge=1, le=1000)] | None = Field(
        None, description="groups a user may join (or open) in this campaign; unlimited when absent")
    new_users_only: bool = False
    auto_complete_min: Annotated[int, Field(strict=True, ge=1, le=999)] | None = Field(
        None, description="paid members that form the group at the smallest tier at the deadline")
    reward_budget: Money | None = Field(None, description="budget for initiator rewards (minor units)")


class TierOut(BaseModel):
    size: int
    percent_off: int | None = None
    amount_off: int | None = None
    price: int | None = Field(None, description="the member price at this tier (minor units)")


class CampaignOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "campaign_id": "c-tea-1121", "sku": "tea-500g", "product_name": "Longjing tea 500 g", "list_price": 10000,
        "currency": "CNY", "tiers": [{"size": 2, "percent_off": 20, "amount_off": None, "price": 8000},
                                     {"size": 3, "percent_off": 30, "amount_off": None, "price": 7000}],
        "starts_at": "2026-11-21T00:00:00Z", "ends_at": "2026-11-28T00:00:00Z", "stock": 300, "stock_left": 297,
        "group_window_minutes": 1440, "seat_payment_minutes": 15, "per_user_limit": 2, "new_users_only": False,
        "auto_complete_min": None, "reward_budget": 50000, "active": True,
        "created_at": "2026-11-21T09:00:00Z"}]})
    campaign_id: str
    sku: str
    product_name: str | None
    list_price: int
    currency: str
    tiers: list[TierOut]
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    stock: int
    stock_left: int
    group_window_minutes: int
    seat_payment_minutes: int
    per_user_limit: int | None
    new_users_only: bool
    auto_complete_min: int | None
    reward_budget: int | None
    active: bool
    created_at: UtcDatetime


class MemberOut(BaseModel):
    user: str = Field(description="masked user id (yours in clear)")
    you: bool
    seat: int
    status: Literal["held", "paid", "released"]
    joined_at: UtcDatetime
    payment_deadline: UtcDatetime | None = Field(None, description="pay before this or the seat is released")
    price: int = Field(description="what this member pays if the group forms at the tier reached now")


class GroupOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "group_id": "g-4f2a9c0e1b7d4e21", "campaign_id": "c-tea-1121", "status": "open", "initiator": "c***l",
        "deadline": "2026-11-22T10:00:00Z", "opened_at": "2026-11-21T10:00:00Z", "max_seats": 3,
        "seats_taken": 2, "seats_paid": 2, "seats_left": 1, "list_price": 10000, "currency": "CNY",
        "tier_reached": {"size": 2, "percent_off": 20, "amount_off": None}, "price_now": 8000,
        "tiers": [{"size": 2, "percent_off": 20, "amount_off": None, "price": 8000},
                  {"size": 3, "percent_off": 30, "amount_off": None, "price": 7000}],
        "members": [
            {"user": "c***l", "you": False, "seat": 1, "status": "paid", "joined_at": "2026-11-21T10:00:00Z",
             "payment_deadline": None, "price": 8000},
            {"user": "dave", "you": True, "seat": 2, "status": "paid", "joined_at": "2026-11-21T10:05:00Z",
             "payment_deadline": None, "price": 8000}]}]})
    group_id: str
    campaign_id: str
    status: Literal["open", "formed", "failed"]
    initiator: str
    deadline: UtcDatetime
    opened_at: UtcDatetime
    max_seats: int
    seats_taken: int
    seats_paid: int
    seats_left: int
    list_price: int
    currency: str
    tier_reached: TierOut | None = Field(description="best tier the paid members reach now (or the outcome's)")
    price_now: int = Field(description="the member price at the tier reached (the smallest tier's until then)")
    tiers: list[TierOut]
    members: list[MemberOut]


class GroupList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"groups": [
        GroupOut.model_config["json_schema_extra"]["examples"][0]]}]})  # type: ignore[index]
    groups: list[GroupOut] = Field(description="joinable groups, soonest to close first")


# ------------------------------------------------------------------ routes


def build_router(groupbuy: Groupbuy) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    runtime_idempotency: Any = None

    def idempotency(request: Request) -> Any:
        return runtime_idempotency or request.app.state.runtime.idempotency

    @router.post("/campaigns", status_code=201, response_model=CampaignOut, tags=["operators"],
                 summary="Create a campaign (operators)",
                 description="Invalid campaigns are refused with 422 and a stable code: `invalid_tiers`, "
                             "`tiers_not_increasing`, `discounts_not_increasing`, `price_below_zero`, "
                             "`invalid_window`, `invalid_auto_complete_min`, … (all problems in `details`). "
                             "An existing `campaign_id` gives 409 `campaign_exists`. Accepts `Idempotency-Key`.")
    async def create_campaign(body: CampaignIn, request: Request, principal: Admin) -> JSONResponse:
        draft = CampaignDraft(
            campaign_id=body.campaign_id, sku=body.sku, product_name=body.product_name, list_price=body.list_price,
            tiers=[TierRule(t.size, t.percent_off, t.amount_off) for t in body.tiers], starts_at=body.starts_at,
            ends_at=body.ends_at, stock=body.stock, group_window_minutes=body.group_window_minutes,
            seat_payment_minutes=body.seat_payment_minutes, per_user_limit=body.per_user_limit,
            new_users_only=body.new_users_only, auto_complete_min=body.auto_complete_min,
            reward_budget=body.reward_budget)

        async def produce() -> tuple[int, Any]:
            view = await groupbuy.create_campaign(draft, principal.user_id)
            return 201, CampaignOut.model_validate(view).model_dump(mode="json")

        return await idempotency(request).run(request, principal.user_id, body.model_dump(mode="json"), produce)

    @router.get("/campaigns/{campaign_id}", response_model=CampaignOut, tags=["operators"],
                summary="A campaign with its tiers, prices and stock left (operators)")
    async def get_campaign(campaign_id: PathId, principal: Admin) -> CampaignOut:
        return CampaignOut.model_validate(await groupbuy.campaign_view(campaign_id))

    @router.get("/campaigns/{campaign_id}/groups", response_model=GroupList, tags=["groups"],
                summary="Groups of a campaign one can still join, soonest to close first")
    async def list_groups(campaign_id: PathId, principal: CurrentUser,
                          status: Annotated[Literal["open"], Query(description="only `open` is listed")] = "open",
                          ) -> GroupList:
        views = await groupbuy.open_groups_view(campaign_id, principal.user_id)
        return GroupList(groups=[GroupOut.model_validate(v) for v in views])

    @router.post("/campaigns/{campaign_id}/groups", status_code=201, response_model=GroupOut, tags=["groups"],
                 summary="Open a group; the caller holds seat 1 and must pay it within the payment window",
                 description="Refusals: 404 `campaign_not_found`, 409 `campaign_not_active`, 403 `new_users_only`, "
                             "409 `per_user_limit_reached`, 409 `out_of_stock`. Accepts `Idempotency-Key`.")
    async def open_group(campaign_id: PathId, request: Request, principal: SeatTaker) -> JSONResponse:
        async def produce() -> tuple[int, Any]:
            view = await groupbuy.open_group(campaign_id, principal.user_id)
            return 201, GroupOut.model_validate(view).model_dump(mode="json")

        return await idempotency(request).run(request, principal.user_id, {"campaign_id": campaign_id}, produce)

    @router.post("/groups/{group_id}/members", status_code=201, response_model=GroupOut, tags=["groups"],
                 responses={410: {"model": ErrorBody, "description": "the group is closed (`group_closed`)"}},
                 summary="Take a seat in a group (pay it within the payment window with an order naming the group)",
                 description="Refusals: 404 `group_not_found`, 409 `group_full`, 409 `already_member` (also when "
                             "your earlier seat here was released), 410 `group_closed`, 409 `campaign_not_active`, "
                             "403 `new_users_only`, 409 `per_user_limit_reached`, 409 `out_of_stock`. "
                             "Accepts `Idempotency-Key`.")
    async def join_group(group_id: PathId, request: Request, principal: SeatTaker) -> JSONResponse:
        async def produce() -> tuple[int, Any]:
            view = await groupbuy.join_group(group_id, principal.user_id)
            return 201, GroupOut.model_validate(view).model_dump(mode="json")

        return await idempotency(request).run(request, principal.user_id, {"group_id": group_id}, produce)

    @router.get("/groups/{group_id}", response_model=GroupOut, tags=["groups"],
                summary="A group: members (masked), seats left, deadline, tier reached and each member's price")
    async def get_group(group_id: PathId, principal: CurrentUser) -> GroupOut:
        return GroupOut.model_validate(await groupbuy.group_view(group_id, principal.user_id))

    return router
