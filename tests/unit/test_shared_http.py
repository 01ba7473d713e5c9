"""The HTTP plumbing every service shares: error shape, body limit, trace context, rate limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.auth import JwtVerifier, Principal, issue_token
from shared.errors import ApiError
from shared.events import schemas as s
from shared.http import RequestContextMiddleware, install_error_handlers
from shared.kafka import derived_traceparent, make_event
from shared.ratelimit import SlidingWindowLimiter, rate_limited
from shared.settings import LOCAL_DEV_JWT_SECRET, ServiceSettings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Body(BaseModel):
    amount: Annotated[int, Field(strict=True, ge=0)]


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.jwt_verifier = JwtVerifier(ServiceSettings(jwt_secret=LOCAL_DEV_JWT_SECRET))
    app.add_middleware(RequestContextMiddleware, service="test", max_body_bytes=1024)
    install_error_handlers(app)

    @app.post("/things")
    async def create(body: Body) -> dict[str, int]:
        return {"amount": body.amount}

    @app.get("/refuse")
    async def refuse() -> None:
        raise ApiError(409, "group_full", "the group is full", {"seats_left": 0})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/event")
    async def event() -> dict[str, str | None]:
        data = s.WithdrawalRequested(user_id="u", withdrawal_id="w", amount=1000, requested_at=datetime.now(UTC))
        return {"traceparent": make_event(data, source="urn:test").traceparent}

    @app.post("/limited")
    async def limited(principal: Annotated[Principal, rate_limited("bind", limit=2, window_seconds=60)]) -> dict:
        return {"user": principal.user_id}

    return app


client = TestClient(make_app(), raise_server_exceptions=False)


def test_validation_errors_use_the_contract_shape_with_422():
    response = client.post("/things", json={"amount": 1.5})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["loc"] == ["body", "amount"]


def test_malformed_json_is_a_4xx_in_the_contract_shape():
    response = client.post("/things", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"


def test_api_errors_unknown_routes_and_methods_keep_the_shape():
    refused = client.get("/refuse")
    assert refused.status_code == 409
    assert refused.json() == {"error": {"code": "group_full", "message": "the group is full",
                                        "details": {"seats_left": 0}}}
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.get("/things").json()["error"]["code"] == "method_not_allowed"


def test_an_unexpected_error_is_a_500_without_internals():
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == {"code": "internal_error", "message": "an unexpected error occurred",
                                        "details": None}


def test_bodies_over_the_limit_are_refused_with_413():
    response = client.post("/things", content=b"{" + b" " * 2000 + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_the_callers_trace_flows_into_events_made_during_the_request():
    response = client.get("/event", headers={"traceparent": TRACEPARENT})
    made = response.json()["traceparent"]
    assert made.split("-")[1] == TRACEPARENT.split("-")[1]
    assert response.headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    fresh = client.get("/event").json()["traceparent"]
    assert fresh and fresh.split("-")[1] != TRACEPARENT.split("-")[1]


def test_events_without_a_trace_get_a_stable_one_from_their_id():
    assert derived_traceparent("e-1") == derived_traceparent("e-1") != derived_traceparent("e-2")


def test_rate_limit_gives_429_with_retry_after_per_user():
    alice = {"Authorization": f"Bearer {issue_token(LOCAL_DEV_JWT_SECRET, 'alice')}"}
    bob = {"Authorization": f"Bearer {issue_token(LOCAL_DEV_JWT_SECRET, 'bob')}"}
    assert [client.post("/limited", headers=alice).status_code for _ in range(2)] == [200, 200]
    refused = client.post("/limited", headers=alice)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert client.post("/limited", headers=bob).status_code == 200
    assert client.post("/limited").status_code == 401


def test_sliding_window_frees_slots_as_time_passes():
    now = [0.0]
    limiter = SlidingWindowLimiter(limit=3, window_seconds=10, clock=lambda: now[0])
    assert [limiter.check("k") for _ in range(3)] == [None, None, None]
    assert limiter.check("k") == 10
    now[0] = 10.5
    assert limiter.check("k") is None
