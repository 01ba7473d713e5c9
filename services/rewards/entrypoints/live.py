"""The live campaign page for operators without Grafana: ``GET /live`` (a static HTML page with a
few lines of JS drawing inline SVG; no build step, nothing loaded from elsewhere) polling
``GET /v1/stats/funnel`` (admin scope).

The page itself carries no data, so it is served without a token; the JS asks for an admin
bearer token once (kept in ``sessionStorage``), or takes ``?token=`` for kiosks, stores it and
removes it from the address bar. The JSON endpoint only accepts ``Authorization: Bearer``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from services.rewards.adapters.funnel import FunnelStore
from services.rewards.domain.funnel import summarize
from shared.auth import Admin
from shared.errors import ERROR_RESPONSES
from shared.events.envelope import UtcDatetime

PAGE = Path(__file__).with_name("live.html")


class ReferralFunnelOut(BaseModel):
    bound: int = Field(description="invitees bound (referral.bound)")
    qualified: int = Field(description="referrals qualified by a first order")
    disqualified: int = Field(description="qualified referrals taken back by a full refund")
    net_qualified: int = Field(description="qualified - disqualified")
    flagged: int = Field(description="bindings flagged for review instead of rewarded")
    milestones: int = Field(description="milestones reached (high-fission user, fission expert)")


class GroupFunnelOut(BaseModel):
    opened: int
    members_joined: int
    members_paid: int
    formed: int
    failed: int
    open_now: int = Field(description="opened - formed - failed")
    seats_released: int


class CouponCountsOut(BaseModel):
    issued: int
    redeemed: int
    revoked: int


class CommissionTotalsOut(BaseModel):
    credited: int = Field(description="minor units (fen) credited")
    reversed: int = Field(description="minor units reversed (positive)")
    withdrawn: int = Field(description="minor units withdrawn (positive)")
    credited_count: int
    reversed_count: int
    withdrawn_count: int
    currency: str = "CNY"


class FunnelOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "as_of": "2026-11-21T10:00:00Z",
        "referral": {"bound": 7, "qualified": 7, "disqualified": 1, "net_qualified": 6, "flagged": 0,
                     "milestones": 2},
        "groupbuy": {"opened": 2, "members_joined": 4, "members_paid": 5, "formed": 1, "failed": 1,
                     "open_now": 0, "seats_released": 1},
        "coupons": {"issued": 22, "redeemed": 0, "revoked": 1},
        "commissions": {"credited": 1000, "reversed": 500, "withdrawn": 0, "credited_count": 2,
                        "reversed_count": 1, "withdrawn_count": 0, "currency": "CNY"}}]})

    as_of: UtcDatetime
    referral: ReferralFunnelOut
    groupbuy: GroupFunnelOut
    coupons: CouponCountsOut
    commissions: CommissionTotalsOut


router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/v1/stats/funnel", tags=["operators"], response_model=FunnelOut,
            summary="The campaign funnel now: referrals, groups, coupons, commissions (admin scope)")
async def funnel(request: Request, _: Admin) -> Any:
    store: FunnelStore = request.app.state.funnel
    deps = request.app.state.rewards_deps
    return summarize(await store.tallies(), deps.clock.now())


@cache
def _page() -> tuple[str, str]:
    html = PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts)
    # Only our own inline script runs, only this origin is fetched, and the token that may be in
    # the URL is never sent as a referrer.
    policy = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
              "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, policy


@router.get("/live", tags=["operators"], response_class=HTMLResponse,
            summary="Live campaign page (HTML; asks for an admin token, or takes ?token= for kiosks)")
async def live_page() -> HTMLResponse:
    html, policy = _page()
    return HTMLResponse(html, headers={
        "Content-Security-Policy": policy, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff"})
