"""Fuzz every OpenAPI operation of the three services (real processes, real Kafka and store) with
schemathesis, valid and invalid inputs, with the token each operation needs: no 5xx ever, and every
4xx in the contract's error shape. Bounded: SEC_FUZZ_EXAMPLES per operation and generation mode."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.security import OPERATIONS_PATHS, PUBLIC_PAGES, required_scope
from tests.support.services import token
from tests.support.system import running_system

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

EXAMPLES = int(os.environ.get("SEC_FUZZ_EXAMPLES", "20"))
# Rate limits out of the way: the fuzzer should reach the handlers (limits have their own tests).
HIGH_LIMITS = {"referral": {"REFERRAL_BIND_RATE_LIMIT_PER_MINUTE": "100000",
                            "REFERRAL_CODE_RATE_LIMIT_PER_MINUTE": "100000"},
               "groupbuy": {"GROUPBUY_JOIN_RATE_LIMIT_PER_MINUTE": "100000"}}


def _problem(response: Any) -> str | None:
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:300]}"
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} without a JSON body: {response.text[:200]!r}"
        error = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(error, dict)
                and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
            return f"{response.status_code} not in the error shape: {json.dumps(body)[:300]}"
    return None


def fuzz_service(name: str, base_url: str, examples: int, known: dict[str, str]) -> tuple[int, list[str]]:
    """Runs every operation of one service; returns (requests made, problems found)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    problems: list[str] = []
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in OPERATIONS_PATHS | PUBLIC_PAGES:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(name, base_url, operation, mode, examples, statuses, problems, known)()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode == GenerationMode.NEGATIVE, operation.path
    return len(statuses), problems


def _fuzz_operation(name: str, base_url: str, operation: Any, mode: GenerationMode, examples: int,
                    statuses: list[int], problems: list[str], known: dict[str, str]) -> Any:
    scope = required_scope(operation.path, operation.definition.raw)

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        user = f"fuzz-{len(statuses) % 3}"  # a few users: ownership paths are exercised too
        if len(statuses) % 2 and case.path_parameters:  # half the cases hit real campaigns and groups
            for param in case.path_parameters:
                if param in known:
                    case.path_parameters[param] = known[param]
        response = case.call(base_url=base_url, headers=token(user, scope), timeout=15)
        statuses.append(response.status_code)
        if os.environ.get("SEC_FUZZ_DEBUG"):
            print(name, operation.method, operation.path, mode.value, response.status_code, response.text[:80])
        problem = _problem(response)
        if problem is not None:  # collected, not raised: no shrinking, every problem reported
            problems.append(f"{name} {operation.method.upper()} {operation.path} [{mode.value}] "
                            f"{problem}\n    reproduce: {case.as_curl_command()}")

    return run


async def _seed(system: Any) -> dict[str, str]:
    """Real ids for path parameters, so the fuzzer gets past `not found` on half its cases."""
    campaign = {"campaign_id": "c-fuzz", "sku": "tea", "list_price": 10000, "stock": 1000,
                "tiers": [{"size": 2, "percent_off": 20}, {"size": 5, "amount_off": 3000}],
                "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}
    created = await system.call("groupbuy", "POST", "/v1/campaigns", "ops", "admin", json=campaign)
    assert created.status_code == 201, created.text
    group = await system.call("groupbuy", "POST", "/v1/campaigns/c-fuzz/groups", "fuzz-opener")
    assert group.status_code == 201, group.text
    code = await system.call("referral", "POST", "/v1/referral-codes", "fuzz-0")
    return {"campaign_id": "c-fuzz", "group_id": group.json()["group_id"], "invitee_id": "fuzz-1",
            "code": code.json()["code"]}


async def test_fuzzing_every_operation_of_every_service_gives_no_5xx_and_only_contract_errors(
        infra: Any, namespace: str, tmp_path: Path) -> None:
    async with running_system(infra, namespace, tmp_path, extra_env=HIGH_LIMITS) as system:
        known = await _seed(system)
        # one thread, one service after the other: hypothesis is not thread-safe
        outcomes = await asyncio.to_thread(lambda: [
            fuzz_service(name, service.url, EXAMPLES, known) for name, service in system.services.items()])
    calls = sum(count for count, _ in outcomes)
    print(f"fuzz: {calls} calls")
    problems = [problem for _, found in outcomes for problem in found]
    assert calls >= 18 * EXAMPLES, calls  # every operation was exercised
    assert not problems, f"{len(problems)} problems in {calls} calls:\n" + "\n".join(problems[:40])
