"""Referral codes and binding: every refusal code, both channels, idempotency."""

from __future__ import annotations

from typing import Any

import pytest

from services.referral.domain.codes import ALPHABET
from tests.support.services import token

from .conftest import DAY, Harness, completed, ms, registered, ts, uid

pytestmark = pytest.mark.integration


async def test_code_is_created_once_and_the_same_after(harness: Harness) -> None:
    alice = uid("alice")
    first = await harness.client.post("/v1/referral-codes", headers=token(alice))
    again = await harness.client.post("/v1/referral-codes", headers=token(alice))
    other = await harness.client.post("/v1/referral-codes", headers=token(uid("carol")))
    assert (first.status_code, again.status_code) == (201, 200)
    code = first.json()["code"]
    assert again.json()["code"] == code != other.json()["code"]
    assert len(code) == 8 and set(code) <= set(ALPHABET)
    assert first.json()["share_url"] == f"https://pinwheel.example/r/{code}"
    assert (await harness.client.post("/v1/referral-codes")).status_code == 401


async def test_registration_with_a_code_binds_and_publishes_bound(harness: Harness) -> None:
    alice, bob = uid("alice"), uid("bob")
    code = await harness.code_of(alice)
    event = registered(bob, referral_code=code.lower(), device_id="dev-bob", ip="198.51.100.7")
    await harness.send_user(event)
    [bound] = await harness.events.wait("referral.bound", invitee_id=bob)
    assert bound["data"]["inviter_id"] == alice
    assert bound["data"]["channel"] == "registration"
    assert bound["data"]["code"] == code
    assert bound["data"]["source_event_id"] == event["id"]
    # Times are kept to the millisecond (the store's precision).
    assert ts(bound["data"]["bound_at"]) == ms(event["data"]["registered_at"])
    mine = await harness.me(alice)
    assert mine["invitees"] == [{"invitee": f"{bob[0]}***{bob[-1]}", "status": "bound",
                                 "bound_at": bound["data"]["bound_at"], "qualified_at": None}]
    assert mine["qualified_count"] == 0
    assert mine["next_milestone"] == {"milestone": "high_fission_user", "at": 3, "remaining": 3}


async def test_app_binding_within_the_window(harness: Harness) -> None:
    alice, bob = uid("alice"), uid("bob")
    code = await harness.code_of(alice)
    await harness.send_user(registered(bob))
    await harness.wait_registration(bob)
    response = await harness.bind(bob, f" {code[:4]}-{code[4:].lower()} ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["invitee_id"] == bob and body["status"] == "bound" and body["channel"] == "app"
    [bound] = await harness.events.wait("referral.bound", invitee_id=bob)
    assert bound["data"]["channel"] == "app" and "source_event_id" not in bound["data"]
    again = await harness.bind(bob, code)
    assert again.status_code == 200 and again.json()["invitee_id"] == bob
    await harness.events.settle(1.0)
    assert len(harness.events.of("referral.bound", invitee_id=bob)) == 1


async def _refusal(harness: Harness, invitee: str, code: str) -> tuple[int, str]:
    response = await harness.bind(invitee, code)
    body: dict[str, Any] = response.json()
    return response.status_code, body["error"]["code"]


async def test_every_refusal_code_over_the_api(harness: Harness) -> None:
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    code = await harness.code_of(alice)
    carol_code = await harness.code_of(carol)
    for user in (alice, bob, carol):
        await harness.send_user(registered(user, device_id=f"dev-{user}"))
        await harness.wait_registration(user)

    assert await _refusal(harness, bob, "ZZZZZZZZ") == (404, "unknown_code")
    assert await _refusal(harness, bob, "not a code!") == (404, "unknown_code")
    assert await _refusal(harness, alice, code) == (409, "self_invite")
    assert await _refusal(harness, dave, code) == (409, "not_registered")

    assert (await harness.bind(bob, code)).status_code == 201
    assert await _refusal(harness, bob, carol_code) == (409, "already_bound")

    # A cycle: bob invited by alice; alice may not be invited by bob, nor by bob's invitee.
    bob_code = await harness.code_of(bob)
    assert await _refusal(harness, alice, bob_code) == (409, "would_make_cycle")
    erin = uid("erin")
    await harness.send_user(registered(erin, referral_code=bob_code))
    await harness.wait_binding(erin)
    erin_code = await harness.code_of(erin)
    assert await _refusal(harness, alice, erin_code) == (409, "would_make_cycle")

    # The window: 7 days after registering, judged at the request's time.
    frank = uid("frank")
    await harness.send_user(registered(frank, at=harness.clock() - 8 * DAY))
    await harness.wait_registration(frank)
    assert await _refusal(harness, frank, code) == (409, "window_passed")

    # Ordered before binding.
    gina = uid("gina")
    await harness.send_user(registered(gina, at=harness.clock() - DAY))
    await harness.wait_registration(gina)
    await harness.send_order(completed(gina, at=harness.clock() - DAY / 2))
    await _wait_order(harness, gina)
    assert await _refusal(harness, gina, code) == (409, "already_ordered")

    # The inviter's own device.
    hank = uid("hank")
    await harness.send_user(registered(hank, device_id=f"dev-{alice}"))
    await harness.wait_registration(hank)
    assert await _refusal(harness, hank, code) == (409, "inviter_device")

    bad = await harness.client.post("/v1/referrals", json={"code": ""}, headers=token(bob))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert (await harness.client.post("/v1/referrals", json={"nope": 1}, headers=token(bob))).status_code == 422


async def _wait_order(harness: Harness, user_id: str) -> None:
    from tests.support.services import eventually

    await eventually(lambda: harness.deps.store.earliest_order_of(user_id), message=f"order of {user_id}")


async def test_registration_refusals_are_recorded_not_dead_lettered(harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    await harness.send_user(registered(alice, device_id="dev-shared-a"))
    await harness.wait_registration(alice)
    cases = {
        "unknown_code": registered(uid("u"), referral_code="ZZZZZZZZ"),
        "self_invite": registered(uid("self"), referral_code=None),
        "inviter_device": registered(uid("dev"), referral_code=code, device_id="dev-shared-a"),
    }
    # self-invite through registration: the owner registers (again) with their own code
    cases["self_invite"] = registered(alice, referral_code=code)
    for event in cases.values():
        await harness.send_user(event)
    for reason, event in cases.items():
        refusal = await _eventually_refusal(harness, event["id"])
        assert refusal["reason"] == reason
    await harness.events.settle(1.0)
    for event in cases.values():
        assert harness.events.of(invitee_id=event["data"]["user_id"]) == []


async def _eventually_refusal(harness: Harness, event_id: str) -> dict[str, Any]:
    from tests.support.services import eventually

    refusal: dict[str, Any] = await eventually(lambda: harness.deps.store.refusal(event_id),
                                               message=f"refusal of {event_id}")
    return refusal


async def test_idempotency_key_replays_the_first_response(harness: Harness) -> None:
    alice, bob = uid("alice"), uid("bob")
    code = await harness.code_of(alice)
    await harness.send_user(registered(bob))
    await harness.wait_registration(bob)
    headers = {**token(bob), "Idempotency-Key": "k-1"}
    first = await harness.client.post("/v1/referrals", json={"code": code}, headers=headers)
    replay = await harness.client.post("/v1/referrals", json={"code": code}, headers=headers)
    other = await harness.client.post("/v1/referrals", json={"code": "ZZZZZZZZ"}, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
