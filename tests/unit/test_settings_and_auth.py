"""Settings from the environment, and JWT verification against every way a token can be bad."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.groupbuy.settings import GroupbuySettings
from services.referral.settings import ReferralSettings
from services.rewards.settings import RewardsSettings
from shared.auth import JwtVerifier, issue_token
from shared.errors import ApiError
from shared.settings import LOCAL_DEV_JWT_SECRET


def test_contract_defaults(monkeypatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "PINWHEEL_JWT_SECRET", "REFERRAL_PORT"):
        monkeypatch.delenv(var, raising=False)
    settings = ReferralSettings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.mongodb_uri.get_secret_value() == "mongodb://127.0.0.1:27017"
    assert (ReferralSettings().port, GroupbuySettings().port, RewardsSettings().port) == (8001, 8002, 8003)
    assert settings.mongodb_database == "pinwheel_referral" and settings.consumer_group == "pinwheel-referral"


def test_env_vars_and_service_prefix(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:27018")
    monkeypatch.setenv("GROUPBUY_PORT", "9002")
    monkeypatch.setenv("REFERRAL_PORT", "9001")
    settings = GroupbuySettings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert settings.mongodb_uri.get_secret_value() == "mongodb://127.0.0.1:27018"
    assert settings.port == 9002
    assert "27018" not in repr(settings), "secrets are not printed"


def test_production_refuses_the_local_default_secret(monkeypatch):
    monkeypatch.setenv("PINWHEEL_ENV", "production")
    monkeypatch.delenv("PINWHEEL_JWT_SECRET", raising=False)
    with pytest.raises(ValueError, match="production"):
        RewardsSettings()
    monkeypatch.setenv("PINWHEEL_JWT_SECRET", LOCAL_DEV_JWT_SECRET)
    with pytest.raises(ValueError, match="production"):
        RewardsSettings()
    monkeypatch.setenv("PINWHEEL_JWT_SECRET", "a-real-secret-from-the-vault-of-enough-length")
    assert RewardsSettings().environment == "production"


def _verifier(**overrides) -> JwtVerifier:
    return JwtVerifier(ReferralSettings(jwt_secret=LOCAL_DEV_JWT_SECRET, **overrides))


def test_a_valid_token_gives_the_user_and_scopes():
    principal = _verifier().verify(issue_token(LOCAL_DEV_JWT_SECRET, "alice", "admin service"))
    assert principal.user_id == "alice" and principal.scopes == {"admin", "service"}


def _claims(**changes):
    now = int(time.time())
    claims = {"sub": "alice", "aud": "pinwheel", "exp": now + 3600, "scope": ""}  # built at collection time
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(("token", "message"), [
    ("garbage", "invalid token"),
    (jwt.encode(_claims(exp=int(time.time()) - 60), LOCAL_DEV_JWT_SECRET, "HS256"), "expired"),
    (jwt.encode(_claims(nbf=int(time.time()) + 600), LOCAL_DEV_JWT_SECRET, "HS256"), "not valid yet"),
    (jwt.encode(_claims(), "another-secret-of-sufficient-length-123456", "HS256"), "invalid token"),
    (jwt.encode(_claims(aud="someone-else"), LOCAL_DEV_JWT_SECRET, "HS256"), "invalid token"),
    (jwt.encode(_claims(exp=None), LOCAL_DEV_JWT_SECRET, "HS256"), "invalid token"),
    (jwt.encode(_claims(sub=None), LOCAL_DEV_JWT_SECRET, "HS256"), "invalid token"),
    (jwt.encode(_claims(), None, "none"), "invalid token"),
    (jwt.encode(_claims(), LOCAL_DEV_JWT_SECRET, "HS512"), "invalid token"),
])
def test_bad_tokens_are_refused_with_401(token, message):
    with pytest.raises(ApiError) as refused:
        _verifier().verify(token)
    assert refused.value.status == 401 and message in refused.value.message


def test_rs256_in_production_and_hs256_tokens_are_then_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    verifier = JwtVerifier(ReferralSettings(environment="production", jwt_public_key=public, jwt_secret=None))
    assert verifier.verify(jwt.encode(_claims(), key, "RS256")).user_id == "alice"
    with pytest.raises(ApiError):
        # algorithm confusion: the public key used as an HMAC secret
        verifier.verify(jwt.encode(_claims(), LOCAL_DEV_JWT_SECRET, "HS256"))
