"""REST API of the referral service (mobile app and operators)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.referral import handlers
from services.referral.domain.rules import REFUSAL_MESSAGES, Refusal
from services.referral.domain.status import mask_id
from services.referral.handlers import BindingRefused, Deps, ReviewConflict
from shared.auth import Admin, CurrentUser, Principal
from shared.errors import ERROR_RESPONSES, ApiError
from shared.events.envelope import NO_NUL, UtcDatetime
from shared.ratelimit import rate_limited_by_setting

router = APIRouter()

StatusName = Literal["bound", "qualified", "disqualified", "under_review", "rejected"]

# Per-user rate limits (429 + Retry-After): code entry is what one would brute-force.
CodeEnterer = Annotated[Principal, rate_limited_by_setting("code_entry", "bind_rate_limit_per_minute")]
CodeCreator = Annotated[Principal, rate_limited_by_setting("code_creation", "code_rate_limit_per_minute")]

# unknown_code is "not found"; every other refusal conflicts with the invitee's current state.
REFUSAL_STATUS = {Refusal.UNKNOWN_CODE: 404}


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.referral
    return deps


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class ReferralCodeOut(BaseModel):
    model_config = _example({"code": "K7QM2ZPA", "share_url": "https://pinwheel.example/r/K7QM2ZPA",
                             "created_at": "2026-11-21T10:00:00Z"})
    code: str = Field(description="8 symbols from 23456789ABCDEFGHJKMNPQRSTUVWXYZ (no 0/O, 1/I/L)")
    share_url: str
    created_at: UtcDatetime


class BindIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"code": "K7QM2ZPA"}]})
    code: Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True, pattern=NO_NUL)] = Field(
        description="case and dashes/spaces are ignored")


class BindingOut(BaseModel):
    model_config = _example({"invitee_id": "bob", "inviter": "a***e", "code": "K7QM2ZPA", "status": "bound",
                             "channel": "app", "bound_at": "2026-11-21T10:05:00Z"})
    invitee_id: str
    inviter: str = Field(description="the inviter's id, masked")
    code: str
    status: StatusName
    channel: Literal["registration", "app"]
    bound_at: UtcDatetime


class InviteeOut(BaseModel):
    invitee: str = Field(description="masked user id")
    status: StatusName
    bound_at: UtcDatetime
    qualified_at: UtcDatetime | None = None


class NextMilestoneOut(BaseModel):
    milestone: Literal["high_fission_user", "fission_expert"]
    at: int = Field(description="qualified invites needed")
    remaining: int


class MyReferralsOut(BaseModel):
    model_config = _example({
        "qualified_count": 3, "milestones_reached": ["high_fission_user"],
        "next_milestone": {"milestone": "fission_expert", "at": 5, "remaining": 2},
        "invitees": [
            {"invitee": "b***b", "status": "qualified", "bound_at": "2026-11-21T10:05:00Z",
             "qualified_at": "2026-11-21T11:00:00Z"},
            {"invitee": "c***l", "status": "under_review", "bound_at": "2026-11-21T10:06:00Z"}]})
    qualified_count: int
    milestones_reached: list[Literal["high_fission_user", "fission_expert"]] = Field(
        description="every milestone ever reached (announced once, kept after a disqualification)")
    next_milestone: NextMilestoneOut | None
    invitees: list[InviteeOut]


class LeaderboardEntryOut(BaseModel):
    rank: int
    inviter: str = Field(description="masked user id")
    qualified_invites: int
    is_you: bool


class LeaderboardOut(BaseModel):
    model_config = _example({"period": "week", "since": "2026-11-16T00:00:00Z", "entries": [
        {"rank": 1, "inviter": "a***e", "qualified_invites": 5, "is_you": True},
        {"rank": 2, "inviter": "d***e", "qualified_invites": 2, "is_you": False}]})
    period: Literal["day", "week", "month"]
    since: UtcDatetime = Field(description="start of the calendar period in UTC (week starts Monday)")
    entries: list[LeaderboardEntryOut]


class FlaggedOut(BaseModel):
    invitee_id: str
    inviter_id: str
    code: str
    channel: Literal["registration", "app"]
    reasons: list[str] = Field(description="daily_binding_limit, shared_device, shared_ip")
    bound_at: UtcDatetime
    device_id: str | None = None
    ip: str | None = None
    status: Literal["under_review"]


class FlaggedListOut(BaseModel):
    model_config = _example({"items": [{
        "invitee_id": "mallory-21", "inviter_id": "mallory", "code": "K7QM2ZPA", "channel": "registration",
        "reasons": ["daily_binding_limit"], "bound_at": "2026-11-21T10:05:00Z", "device_id": "dev-9",
        "ip": "203.0.113.7", "status": "under_review"}]})
    items: list[FlaggedOut]


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"decision": "approve"}]})
    decision: Literal["approve", "reject"]


class ReviewOut(BaseModel):
    model_config = _example({"invitee_id": "mallory-21", "decision": "approve", "status": "bound",
                             "reviewed_at": "2026-11-21T12:00:00Z"})
    invitee_id: str
    decision: Literal["approve", "reject"]
    status: StatusName
    reviewed_at: UtcDatetime


def _refusal_error(refused: BindingRefused) -> ApiError:
    refusal = refused.refusal
    return ApiError(REFUSAL_STATUS.get(refusal, 409), refusal.value, REFUSAL_MESSAGES[refusal])


async def _binding_out(deps: Deps, binding: dict[str, Any]) -> dict[str, Any]:
    status = await handlers.binding_status(deps, binding)
    return {"invitee_id": binding["_id"], "inviter": mask_id(binding["inviter_id"]), "code": binding["code"],
            "status": status.value, "channel": binding["channel"], "bound_at": binding["bound_at"]}


@router.post(
    "/v1/referral-codes", tags=["referral"], response_model=ReferralCodeOut, status_code=201,
    summary="Get the caller's referral code and share URL (created once, the same one after)",
    responses={**ERROR_RESPONSES, 200: {"model": ReferralCodeOut, "description": "the code existed already"}},
)
async def create_referral_code(
    request: Request, user: CodeCreator,
) -> JSONResponse:
    deps = _deps(request)

    async def produce() -> tuple[int, Any]:
        document, created = await handlers.get_or_create_code(deps, user.user_id)
        body = {"code": document["code"], "share_url": handlers.share_url(deps, document["code"]),
                "created_at": document["created_at"]}
        return (201 if created else 200), ReferralCodeOut.model_validate(body).model_dump(mode="json")

    return await request.app.state.runtime.idempotency.run(request, user.user_id, {}, produce)


@router.post(
    "/v1/referrals", tags=["referral"], response_model=BindingOut, status_code=201,
    summary="Bind the caller (the invitee) to the owner of a referral code",
    description=(
        "Within the binding window after registering and before any completed order. Refusals carry a "
        "stable code: `unknown_code` (404), `self_invite`, `already_bound`, `not_registered`, "
        "`window_passed`, `already_ordered`, `inviter_device`, `would_make_cycle` (409). A binding that "
        "trips a fraud rule is created with status `under_review` (201) and waits for an operator. "
        "The same code again after binding returns the binding (200)."),
    responses={**ERROR_RESPONSES, 200: {"model": BindingOut, "description": "already bound to this code's owner"}},
)
async def bind_referral(
    request: Request, user: CodeEnterer,
    body: Annotated[BindIn, Body(openapi_examples={"bind": {"value": {"code": "K7QM2ZPA"}}})],
) -> JSONResponse:
    deps = _deps(request)

    async def produce() -> tuple[int, Any]:
        existing = await deps.store.binding_of(user.user_id)
        try:
            binding = await handlers.bind(deps, invitee_id=user.user_id, code=body.code, channel="app")
        except BindingRefused as refused:
            raise _refusal_error(refused) from None
        status = 200 if existing is not None else 201
        return status, BindingOut.model_validate(await _binding_out(deps, binding)).model_dump(mode="json")

    return await request.app.state.runtime.idempotency.run(request, user.user_id, body.model_dump(), produce)


@router.get("/v1/me/referrals", tags=["referral"], response_model=MyReferralsOut,
            summary="The caller's invitees, qualified count, milestones and progress", responses=ERROR_RESPONSES)
async def my_referrals(
    request: Request, user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000, description="invitees listed at most (oldest first)")] = 1000,
) -> dict[str, Any]:
    return await handlers.my_referrals(_deps(request), user.user_id, limit=limit)


@router.get("/v1/referrals/leaderboard", tags=["referral"], response_model=LeaderboardOut,
            summary="Top inviters by invites qualified in the period (ids masked)", responses=ERROR_RESPONSES)
async def leaderboard(
    request: Request, user: CurrentUser,
    period: Annotated[Literal["day", "week", "month"], Query(description="calendar period in UTC")] = "week",
) -> dict[str, Any]:
    return await handlers.leaderboard(_deps(request), period, user.user_id)


@router.get("/v1/referrals/flagged", tags=["operator"], response_model=FlaggedListOut,
            summary="Bindings flagged by a fraud rule and waiting for review", responses=ERROR_RESPONSES)
async def flagged(
    request: Request, _: Admin,
    limit: Annotated[int, Query(ge=1, le=500, description="bindings listed at most (oldest first)")] = 500,
) -> dict[str, Any]:
    return {"items": await handlers.flagged(_deps(request), limit=limit)}


@router.post(
    "/v1/referrals/{invitee_id}/review", tags=["operator"], response_model=ReviewOut,
    summary="Approve or reject a flagged binding",
    description=(
        "Decided once: the same decision again returns it, the other one is `409 already_reviewed`. "
        "`approve` publishes the held-back `referral.bound` and a qualification that happened meanwhile; "
        "`reject` ends the referral. `404 not_found` without a binding, `409 not_flagged` for a binding "
        "that was never flagged."),
    responses=ERROR_RESPONSES,
)
async def review(
    request: Request, admin: Admin,
    invitee_id: Annotated[str, Path(min_length=1, max_length=128, pattern=NO_NUL)],
    body: Annotated[ReviewIn, Body(openapi_examples={"approve": {"value": {"decision": "approve"}},
                                                      "reject": {"value": {"decision": "reject"}}})],
) -> dict[str, Any]:
    deps = _deps(request)
    try:
        binding, decision = await handlers.review(deps, invitee_id, body.decision, admin.user_id)
    except LookupError:
        raise ApiError(404, "not_found", "no binding for this invitee") from None
    except ReviewConflict as conflict:
        raise ApiError(409, conflict.code, conflict.message) from None
    status = await handlers.binding_status(deps, binding)
    return {"invitee_id": invitee_id, "decision": decision["decision"], "status": status.value,
            "reviewed_at": decision["reviewed_at"]}

