"""Authentication and scopes on every endpoint of the three running services, enumerated from their
OpenAPI documents (a new endpoint is covered without touching this file)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.referral.bootstrap import build_app as build_referral
from services.referral.settings import ReferralSettings
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.security import PUBLIC_PAGES, Trio, api_operations, assert_error_shape, fill_path, required_scope
from tests.support.services import running, settings_for, token

pytestmark = pytest.mark.integration


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "mallory", "scope": "admin service", "aud": "pinwheel", "iat": now, "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(claims: dict[str, Any], secret: str = LOCAL_DEV_JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _alg_none() -> str:
    return jwt.encode(_claims(), None, algorithm="none")  # type: ignore[arg-type]


def _rs256_with_unknown_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return jwt.encode(_claims(), pem, algorithm="RS256")


def _tampered() -> str:
    """A valid user token whose payload was swapped for one claiming the admin scope."""
    header, _, signature = _hs256(_claims(scope="")).split(".")
    forged_payload = _hs256(_claims(scope="admin service")).split(".")[1]
    return f"{header}.{forged_payload}.{signature}"


# Each attack: the Authorization header it sends (None: no header).
ATTACKS: dict[str, str | None] = {
    "no_token": None,
    "empty_bearer": "Bearer ",
    "basic_scheme": "Basic bWFsbG9yeTpwYXNzd29yZA==",
    "malformed_jwt": "Bearer not-a-jwt",
    "garbage_segments": "Bearer aaaa.bbbb.cccc",
    "expired": "Bearer " + _hs256(_claims(exp=int(time.time()) - 3600)),
    "not_yet_valid": "Bearer " + _hs256(_claims(nbf=int(time.time()) + 3600)),
    "wrong_signature": "Bearer " + _hs256(_claims(), secret="an-attackers-own-secret-0123456789abcdef"),
    "tampered_payload": "Bearer " + _tampered(),
    "alg_none": "Bearer " + _alg_none(),
    "alg_rs256_unknown_key": "Bearer " + _rs256_with_unknown_key(),
    "wrong_audience": "Bearer " + _hs256(_claims(aud="another-app")),
    "no_audience": "Bearer " + _hs256(_claims(aud=None)),
    "no_expiry": "Bearer " + _hs256(_claims(exp=None)),
    "no_subject": "Bearer " + _hs256(_claims(sub=None)),
    "empty_subject": "Bearer " + _hs256(_claims(sub="")),
    "control_chars_in_subject": "Bearer " + _hs256(_claims(sub="alice\x00admin")),
    "scope_not_a_string": "Bearer " + _hs256(_claims(scope=["admin"])),
}


def _request_kwargs(method: str, attack: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"headers": {} if attack is None else {"Authorization": attack}}
    if method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = {}
    return kwargs


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_every_endpoint_refuses_a_bad_token_with_401(trio: Trio, attack: str) -> None:
    checked = 0
    for name, service in trio.by_name().items():
        for method, path, _ in api_operations(service.app):
            response = await service.client.request(method, fill_path(path), **_request_kwargs(method, ATTACKS[attack]))
            assert response.status_code == 401, (name, method, path, response.status_code, response.text)
            assert assert_error_shape(response)["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 18  # referral 6, groupbuy 6, rewards 6 at least


def test_the_enumeration_sees_every_operator_and_checkout_endpoint() -> None:
    """The scope table the tests use matches the apps (guards required_scope against drift)."""
    scoped = {}
    for build, settings_cls in ((build_referral, ReferralSettings),):
        app = build(settings_cls())
        scoped.update({(m, p): required_scope(p, op) for m, p, op in api_operations(app) if required_scope(p, op)})
    assert scoped == {("GET", "/v1/referrals/flagged"): "admin", ("POST", "/v1/referrals/{invitee_id}/review"): "admin"}


async def test_operator_and_checkout_endpoints_refuse_plain_user_tokens_with_403(trio: Trio) -> None:
    scoped = []
    for name, service in trio.by_name().items():
        for method, path, operation in api_operations(service.app):
            scope = required_scope(path, operation)
            if not scope:
                continue
            scoped.append((name, method, path))
            wrong_scopes = ["", "user", "admin" if scope == "service" else "service", f"{scope}s", scope.upper()]
            for wrong in wrong_scopes:
                kwargs = _request_kwargs(method, None) | {"headers": token("eve", wrong)}
                response = await service.client.request(method, fill_path(path), **kwargs)
                assert response.status_code == 403, (name, method, path, wrong, response.text)
                assert assert_error_shape(response)["code"] == "forbidden"
            right = await service.client.request(method, fill_path(path),
                                                 **_request_kwargs(method, None) | {"headers": token("ops", scope)})
            assert right.status_code not in (401, 403), (name, method, path, right.text)
    assert {(n, m, p) for n, m, p in scoped} >= {
        ("referral", "GET", "/v1/referrals/flagged"), ("referral", "POST", "/v1/referrals/{invitee_id}/review"),
        ("groupbuy", "POST", "/v1/campaigns"), ("groupbuy", "GET", "/v1/campaigns/{campaign_id}"),
        ("rewards", "POST", "/v1/coupons/{code}/redemptions"),
        ("rewards", "DELETE", "/v1/coupons/{code}/redemptions/{order_id}"),
        ("rewards", "GET", "/v1/rewards/refusals")}


async def test_a_token_from_another_issuer_is_refused_when_an_issuer_is_configured(
        infra: Any, namespace: str) -> None:
    settings = settings_for(ReferralSettings, infra, namespace, jwt_issuer="https://id.pinwheel.example")
    async with running(build_referral, settings) as referral:
        for claims, status in ((_claims(), 401), (_claims(iss="https://evil.example"), 401),
                               (_claims(iss="https://id.pinwheel.example"), 200)):
            response = await referral.client.get("/v1/me/referrals",
                                                 headers={"Authorization": f"Bearer {_hs256(claims)}"})
            assert response.status_code == status, (claims, response.text)
            if status == 401:
                assert_error_shape(response)


def test_attack_tokens_are_distinct() -> None:
    values = [v for v in ATTACKS.values() if v]
    assert len(values) == len(set(values))


async def test_public_pages_serve_no_data_without_a_token(trio: Trio) -> None:
    for service in trio.by_name().values():
        for path in PUBLIC_PAGES & set(service.app.openapi()["paths"]):
            response = await service.client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in response.headers["content-security-policy"]
