"""Brute force and replays: per-user rate limits on code entry and group joins (429 + Retry-After),
and Idempotency-Key semantics (same body replays, different body 409, keys expire)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest

from services.groupbuy.settings import GroupbuySettings
from services.referral.domain.codes import ALPHABET
from services.referral.settings import ReferralSettings
from shared.events.envelope import utcnow
from shared.idempotency import COLLECTION
from shared.ratelimit import SlidingWindowLimiter
from tests.support.events import Producer, user_registered
from tests.support.security import Trio, assert_error_shape
from tests.support.services import token, unique

pytestmark = pytest.mark.integration


def _guess() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(8))


def _assert_rate_limited(response: Any) -> int:
    assert assert_error_shape(response, 429)["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    return retry_after


async def test_brute_forcing_referral_codes_is_cut_off_with_429_and_retry_after(trio: Trio) -> None:
    limit = trio.referral.runtime.settings.bind_rate_limit_per_minute
    assert limit == 10  # the default (REFERRAL_BIND_RATE_LIMIT_PER_MINUTE)
    inviter, attacker = unique("alice"), unique("mallory")
    real_code = (await trio.referral.client.post("/v1/referral-codes", headers=token(inviter))).json()["code"]
    async with Producer(trio.referral.runtime.settings.kafka_bootstrap_servers, f"{trio.namespace}.") as producer:
        await producer.send("users.events", user_registered(attacker))
    statuses = []
    for _ in range(limit):
        statuses.append((await trio.referral.client.post("/v1/referrals", headers=token(attacker),
                                                         json={"code": _guess()})).status_code)
    assert statuses == [404] * limit  # unknown_code, as any wrong guess
    # cut off: even the right code (and malformed guesses) are refused until the window frees
    for body in ({"code": real_code}, {"code": _guess()}, {"code": ""}):
        _assert_rate_limited(await trio.referral.client.post("/v1/referrals", headers=token(attacker), json=body))
    # other users are not affected by the attacker's window
    other = await trio.referral.client.post("/v1/referrals", headers=token(unique("bob")), json={"code": _guess()})
    assert other.status_code == 404


async def test_code_creation_is_rate_limited_per_user(trio: Trio) -> None:
    user = unique("spammer")
    limit = trio.referral.runtime.settings.code_rate_limit_per_minute
    for _ in range(limit):
        assert (await trio.referral.client.post("/v1/referral-codes", headers=token(user))).status_code in (200, 201)
    _assert_rate_limited(await trio.referral.client.post("/v1/referral-codes", headers=token(user)))


async def test_group_join_and_open_flooding_is_cut_off_and_the_window_frees_after_a_minute(trio: Trio) -> None:
    limit = trio.groupbuy.runtime.settings.join_rate_limit_per_minute
    assert limit == 20  # the default (GROUPBUY_JOIN_RATE_LIMIT_PER_MINUTE)
    now = [1000.0]
    limiters = getattr(trio.groupbuy.app.state, "rate_limiters", None)
    if limiters is None:
        limiters = trio.groupbuy.app.state.rate_limiters = {}
    limiters["group_join"] = SlidingWindowLimiter(limit, 60, clock=lambda: now[0])
    flooder = unique("flooder")
    for i in range(limit):  # joins and opens of groups that do not exist share one window
        path = f"/v1/groups/g-none-{i}/members" if i % 2 else f"/v1/campaigns/c-none-{i}/groups"
        assert (await trio.groupbuy.client.post(path, headers=token(flooder))).status_code == 404
    _assert_rate_limited(await trio.groupbuy.client.post("/v1/groups/g-x/members", headers=token(flooder)))
    _assert_rate_limited(await trio.groupbuy.client.post("/v1/campaigns/c-x/groups", headers=token(flooder)))
    now[0] += 61
    assert (await trio.groupbuy.client.post("/v1/groups/g-x/members", headers=token(flooder))).status_code == 404


def test_rate_limits_are_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERRAL_BIND_RATE_LIMIT_PER_MINUTE", "3")
    monkeypatch.setenv("REFERRAL_CODE_RATE_LIMIT_PER_MINUTE", "4")
    monkeypatch.setenv("GROUPBUY_JOIN_RATE_LIMIT_PER_MINUTE", "5")
    assert ReferralSettings().bind_rate_limit_per_minute == 3
    assert ReferralSettings().code_rate_limit_per_minute == 4
    assert GroupbuySettings().join_rate_limit_per_minute == 5


async def _campaign(trio: Trio, key: str | None, **changes: Any) -> Any:
    body = {"campaign_id": unique("c-"), "sku": "tea", "list_price": 10000, "stock": 10,
            "tiers": [{"size": 2, "percent_off": 20}],
            "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z", **changes}
    headers = token("ops", "admin") | ({"Idempotency-Key": key} if key else {})
    return await trio.groupbuy.client.post("/v1/campaigns", headers=headers, json=body)


async def test_replaying_a_request_with_its_idempotency_key_returns_the_first_response(trio: Trio) -> None:
    key, campaign_id = unique("key-"), unique("c-")
    first = await _campaign(trio, key, campaign_id=campaign_id)
    again = await _campaign(trio, key, campaign_id=campaign_id)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # without the key the same body is a second request: the id is taken
    assert assert_error_shape(await _campaign(trio, None, campaign_id=campaign_id), 409)["code"] == "campaign_exists"


async def test_reusing_an_idempotency_key_with_a_different_body_is_refused_with_409(trio: Trio) -> None:
    key = unique("key-")
    assert (await _campaign(trio, key, campaign_id=unique("c-"))).status_code == 201
    reused = await _campaign(trio, key, campaign_id=unique("c-"))
    assert assert_error_shape(reused, 409)["code"] == "idempotency_key_reused"


async def test_an_expired_idempotency_key_no_longer_replays(trio: Trio) -> None:
    key, first_id, second_id = unique("key-"), unique("c-"), unique("c-")
    assert (await _campaign(trio, key, campaign_id=first_id)).status_code == 201
    records = trio.groupbuy.db[COLLECTION]
    record = await records.find_one({"_id": {"$regex": f":{key}$"}})
    assert record is not None and record["expires_at"] - record["created_at"] == timedelta(hours=24)
    await records.update_one({"_id": record["_id"]}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}})
    fresh = await _campaign(trio, key, campaign_id=second_id)  # a different body is now a new request
    assert fresh.status_code == 201 and fresh.json()["campaign_id"] == second_id
    assert "idempotent-replayed" not in fresh.headers


@pytest.mark.parametrize("bad_key", ["k" * 129, "tab\tkey"])
async def test_malformed_idempotency_keys_are_refused_with_400(trio: Trio, bad_key: str) -> None:
    response = await _campaign(trio, bad_key)
    assert assert_error_shape(response, 400)["code"] == "invalid_idempotency_key"
