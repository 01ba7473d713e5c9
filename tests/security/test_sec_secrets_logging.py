"""Secrets stay secret: bearer tokens, the JWT secret and the MongoDB password never reach the logs of
the real service processes (structlog JSON), and production mode refuses the local default secret.
The settings-level check is tests/unit/test_settings_and_auth.py::test_production_refuses_the_local_default_secret;
here the real process is started with it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from deploy.local.common import free_port
from shared.auth import issue_token
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.services import eventually
from tests.support.system import ServiceProcess, running_system

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SECRET = "sec-test-jwt-secret-" + "k" * 32
MONGO_PASSWORD = "Mongo-Pa55-do-not-log"


def _log_text(log_dir: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(log_dir.glob("*.log")))


async def test_bearer_tokens_and_the_jwt_secret_never_appear_in_the_logs(
        infra: Any, namespace: str, tmp_path: Path) -> None:
    debug = {"PINWHEEL_JWT_SECRET": SECRET, "PINWHEEL_LOG_LEVEL": "DEBUG", "PINWHEEL_LOG_FORMAT": "json"}
    valid = issue_token(SECRET, "alice")
    admin = issue_token(SECRET, "ops", "admin")
    forged = issue_token("an-attackers-secret-0123456789abcdef0123", "alice", "admin")
    expired = jwt.encode({"sub": "alice", "aud": "pinwheel", "exp": int(time.time()) - 3600}, SECRET,
                         algorithm="HS256")
    tokens = [valid, admin, forged, expired]
    async with running_system(infra, namespace, tmp_path, extra_env={s: debug for s in
                                                                     ("referral", "groupbuy", "rewards")}) as system:
        for name in system.services:
            client = system.client(name)
            for bearer in tokens:
                for path in ("/v1/me/referrals", "/v1/me/coupons", "/v1/groups/g-1", "/v1/nothing-here"):
                    await client.get(path, headers={"Authorization": f"Bearer {bearer}"})
                await client.get("/v1/me/coupons", headers={"Authorization": bearer})  # no scheme
                await client.post("/v1/referrals", headers={"Authorization": f"Bearer {bearer}"},
                                  json={"code": f"{bearer}"})  # a token pasted into a body field
        created = await system.clients["groupbuy"].post(
            "/v1/campaigns", headers={"Authorization": f"Bearer {admin}"}, content=b'{"broken json')
        assert created.status_code == 422
    text = _log_text(tmp_path)
    assert text.count("\n") > 20, "the services logged (at DEBUG) while handling the requests"
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)  # structlog JSON
    for bearer in tokens:
        for part in (bearer, bearer.split(".")[2]):  # the whole token, or its signature alone
            assert part not in text
    assert SECRET not in text and LOCAL_DEV_JWT_SECRET not in text


async def test_the_mongodb_password_in_the_uri_never_appears_in_the_logs(tmp_path: Path) -> None:
    """A store that cannot be reached makes the service log its retries; the URI's password stays out."""
    port = free_port()
    env = {**os.environ, "MONGODB_URI": f"mongodb://pinwheel:{MONGO_PASSWORD}@127.0.0.1:{free_port()}/?authSource=admin",
           "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
           "PINWHEEL_LOG_FORMAT": "json", "PINWHEEL_LOG_LEVEL": "DEBUG", "PINWHEEL_ENV": "test",
           "REFERRAL_PORT": str(port), "PINWHEEL_TOPIC_PREFIX": "sec-nowhere."}
    service = ServiceProcess("referral", port, env, tmp_path / "referral.log")
    await service.start()
    try:
        async def retries_logged() -> bool:
            return "creating indexes failed" in _log_text(tmp_path)

        await eventually(retries_logged, timeout=30, interval=0.5, message="a logged store error")
    finally:
        await service.kill()
    text = _log_text(tmp_path)
    assert "creating indexes failed" in text, text[-2000:]  # the connection errors were logged …
    assert MONGO_PASSWORD not in text  # … without the credentials


async def test_production_mode_refuses_to_start_with_the_local_default_secret(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PINWHEEL_ENV": "production", "PINWHEEL_JWT_SECRET": LOCAL_DEV_JWT_SECRET,
           "PINWHEEL_LOG_FORMAT": "json", "REFERRAL_PORT": str(port)}
    env.pop("PINWHEEL_JWT_PUBLIC_KEY", None)
    service = ServiceProcess("referral", port, env, tmp_path / "referral.log")
    await service.start()
    assert service.process is not None
    code = await asyncio.wait_for(service.process.wait(), 60)
    text = _log_text(tmp_path)
    assert code != 0
    assert "production mode needs PINWHEEL_JWT_PUBLIC_KEY" in text
    assert LOCAL_DEV_JWT_SECRET not in text  # the refusal does not print the secret it refused
