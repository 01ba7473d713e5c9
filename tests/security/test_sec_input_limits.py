"""Bad input at the HTTP boundary: oversized bodies, long strings, big lists, page sizes, NUL and
control characters, deep nesting. Always a 4xx in the contract's error shape, never a 5xx."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.support.security import Trio, api_operations, assert_error_shape, fill_path, required_scope
from tests.support.services import token

pytestmark = pytest.mark.integration

NASTY_STRINGS = ["a\x00b", "\x1b[31m\x7f", "\r\n"]


def _json_body_fields(app: Any, operation: dict[str, Any]) -> dict[str, Any]:
    """The example body of an operation (a valid starting point), resolved from the OpenAPI."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return {}
    schema = content["schema"]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = app.openapi()["components"]["schemas"][name]
    examples = schema.get("examples") or [
        example["value"] for example in content.get("examples", {}).values()]
    return dict(examples[0]) if examples else {name: "x" for name in schema.get("properties", {})}


async def test_nul_and_control_characters_in_every_path_query_and_body_string_never_cause_a_5xx(
        trio: Trio) -> None:
    problems = []
    for name, service in trio.by_name().items():
        for method, path, operation in api_operations(service.app):
            headers = token("nasty-user", required_scope(path, operation))
            body = _json_body_fields(service.app, operation)
            for nasty in NASTY_STRINGS:
                attempts: list[tuple[str, dict[str, Any], Any]] = []
                if "{" in path:
                    attempts.append((fill_path(path, quote(nasty, safe="")), {}, body or None))
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "query":
                        attempts.append((fill_path(path), {parameter["name"]: nasty}, body or None))
                for field in body:
                    if isinstance(body[field], str):
                        attempts.append((fill_path(path), {}, {**body, field: nasty}))
                for url, params, json_body in attempts:
                    kwargs: dict[str, Any] = {"params": params, "headers": headers}
                    if json_body is not None:
                        kwargs["json"] = json_body
                    try:
                        response = await service.client.request(method, url, **kwargs)
                    except Exception as exc:  # in-process: a 500 surfaces as the exception itself
                        problems.append(f"{name} {method} {url} {params} {json_body}: {exc!r:.120}")
                        continue
                    if response.status_code >= 500:
                        problems.append(f"{name} {method} {url} {params} {json_body}: {response.status_code}")
                    elif response.status_code >= 400:
                        assert_error_shape(response)
    assert not problems, "\n".join(problems)


async def test_oversized_bodies_are_refused_with_413_on_every_post(trio: Trio) -> None:
    huge = b'{"code": "' + b"A" * (70 * 1024) + b'"}'
    checked = 0
    for service in trio.by_name().values():
        for method, path, operation in api_operations(service.app):
            if method != "POST":
                continue
            headers = token("big-user", required_scope(path, operation)) | {"Content-Type": "application/json"}
            declared = await service.client.post(fill_path(path), content=huge, headers=headers)
            assert assert_error_shape(declared, 413)["code"] == "payload_too_large"

            async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
                for _ in range(40):
                    yield b" " * 4096

            streamed = await service.client.post(fill_path(path), content=chunks(), headers=headers)
            if "requestBody" in operation:  # an endpoint that takes no body never reads it
                assert assert_error_shape(streamed, 413)["code"] == "payload_too_large"
            checked += 1
    assert checked >= 7


async def test_deeply_nested_json_is_a_4xx_not_a_crash(trio: Trio) -> None:
    nested = "[" * 20_000 + "]" * 20_000  # 40 KB, under the body limit, past the parser's recursion limit
    for service, path, scope in ((trio.referral, "/v1/referrals", ""), (trio.groupbuy, "/v1/campaigns", "admin"),
                                 (trio.rewards, "/v1/me/withdrawals", "")):
        response = await service.client.post(path, content=nested, headers=token("nester", scope) | {
            "Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, response.text[:200]
        assert_error_shape(response)


async def test_overlong_strings_and_oversized_lists_are_refused_with_422(trio: Trio) -> None:
    admin = token("ops", "admin")
    campaign = {"sku": "tea", "list_price": 10000, "stock": 10, "tiers": [{"size": 2, "percent_off": 20}],
                "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}
    attempts = [
        (trio.referral, "POST", "/v1/referrals", token("u1"), {"code": "A" * 33}),
        (trio.groupbuy, "POST", "/v1/campaigns", admin, {**campaign, "sku": "s" * 129}),
        (trio.groupbuy, "POST", "/v1/campaigns", admin, {**campaign, "product_name": "p" * 257}),
        (trio.groupbuy, "POST", "/v1/campaigns", admin, {**campaign, "campaign_id": "c" * 129}),
        (trio.groupbuy, "POST", "/v1/campaigns", admin,
         {**campaign, "tiers": [{"size": n, "percent_off": min(n, 100)} for n in range(2, 14)]}),
        (trio.rewards, "POST", "/v1/coupons/CODE/redemptions", token("checkout", "service"),
         {"order_id": "o" * 129, "user_id": "u", "order_amount": 100}),
        (trio.rewards, "POST", "/v1/me/withdrawals", token("u1"), {"amount": 10**13}),
        (trio.rewards, "POST", "/v1/me/withdrawals", token("u1"), {"amount": 10.5}),
        (trio.rewards, "POST", "/v1/me/withdrawals", token("u1"), {"amount": "1000"}),
    ]
    for service, method, path, headers, body in attempts:
        response = await service.client.request(method, path, headers=headers, json=body)
        assert assert_error_shape(response, 422)["code"] == "validation_error", (path, body)
    long_ids = [(trio.referral, "POST", "/v1/referrals/{}/review", admin),
                (trio.groupbuy, "GET", "/v1/groups/{}", token("u1")),
                (trio.groupbuy, "POST", "/v1/groups/{}/members", token("u1")),
                (trio.rewards, "DELETE", "/v1/coupons/{}/redemptions/o-1", token("checkout", "service"))]
    for service, method, template, headers in long_ids:
        response = await service.client.request(method, template.format("x" * 200), headers=headers,
                                                json={"decision": "approve"} if method == "POST" else None)
        assert_error_shape(response, 422)


def _returns_a_list(app: Any, operation: dict[str, Any]) -> bool:
    schema = operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = app.openapi()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema.get("type") == "array" or any(
        prop.get("type") == "array" for prop in schema.get("properties", {}).values())


async def test_every_list_endpoint_caps_its_page_size(trio: Trio) -> None:
    """List endpoints either take a bounded `limit` or return a bounded list by construction."""
    bounded_by_setting = {("referral", "/v1/referrals/leaderboard"), ("groupbuy", "/v1/campaigns/{campaign_id}/groups")}
    seen = set()
    for name, service in trio.by_name().items():
        for method, path, operation in api_operations(service.app):
            if method != "GET" or "{" in path.rsplit("/", 1)[-1]:
                continue  # a single resource
            if not _returns_a_list(service.app, operation):
                continue  # a single resource or an aggregate
            seen.add((name, path))
            params = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
            if (name, path) in bounded_by_setting:
                assert "limit" not in params
                continue
            assert "limit" in params, (name, path)
            maximum = params["limit"]["schema"]["maximum"]
            assert maximum <= 1000
            headers = token("pager", required_scope(path, operation))
            for bad in (0, -1, maximum + 1, 10**12, "ten"):
                response = await service.client.get(fill_path(path), headers=headers, params={"limit": bad})
                assert_error_shape(response, 422)
            assert (await service.client.get(fill_path(path), headers=headers,
                                             params={"limit": maximum})).status_code == 200
    assert {("referral", "/v1/me/referrals"), ("referral", "/v1/referrals/flagged"), ("rewards", "/v1/me/coupons"),
            ("rewards", "/v1/me/commissions"), ("rewards", "/v1/rewards/refusals")} <= seen
