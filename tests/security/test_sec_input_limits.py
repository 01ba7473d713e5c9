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
