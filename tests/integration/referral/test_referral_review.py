"""Fraud flags and the operator's review: nothing silently dropped, approval continues as if never
flagged, the leaderboard."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.services import token

from .conftest import Harness, completed, registered, uid

pytestmark = pytest.mark.integration

ADMIN = token("ops-1", "admin")


async def test_daily_limit_flags_the_bindings_over_it(harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    invitees = [uid("inv") for _ in range(22)]
    for invitee in invitees:
        await harness.send_user(registered(invitee, referral_code=code))
    bound = await harness.events.wait("referral.bound", count=20, inviter_id=alice, timeout=60)
    flagged = await harness.events.wait("referral.flagged", count=2, inviter_id=alice, timeout=60)
    await harness.events.settle(1.0)
    assert len(harness.events.of("referral.bound", inviter_id=alice)) == 20
    assert {e["data"]["invitee_id"] for e in bound} | {e["data"]["invitee_id"] for e in flagged} == set(invitees)
    assert all(e["data"]["reasons"] == ["daily_binding_limit"] for e in flagged)
    slots = sorted([(await harness.deps.store.binding_of(i))["daily_slot"] for i in invitees])
    assert slots == list(range(1, 23))


async def test_shared_device_and_ip_flag_and_review(harness: Harness) -> None:
    alice = uid("alice")
    code = await harness.code_of(alice)
    device = uid("device")
    same_device = [uid("dev") for _ in range(3)]
    for invitee in same_device:
        await harness.send_user(registered(invitee, referral_code=code, device_id=device))
        await harness.wait_binding(invitee)
    [flag] = await harness.events.wait("referral.flagged", invitee_id=same_device[2])
    assert flag["data"]["reasons"] == ["shared_device"] and flag["data"]["inviter_id"] == alice
    await harness.events.settle(0.5)
    assert harness.events.of("referral.bound", invitee_id=same_device[2]) == []

    same_ip = [uid("ip") for _ in range(5)]
    for invitee in same_ip:
        await harness.send_user(registered(invitee, referral_code=code, ip="203.0.113.9"))
        await harness.wait_binding(invitee)
    [flag] = await harness.events.wait("referral.flagged", invitee_id=same_ip[4])
    assert flag["data"]["reasons"] == ["shared_ip"]

    listed = await harness.client.get("/v1/referrals/flagged", headers=ADMIN)
    assert listed.status_code == 200
    mine = {i["invitee_id"]: i for i in listed.json()["items"] if i["inviter_id"] == alice}
    assert set(mine) == {same_device[2], same_ip[4]}
    assert mine[same_device[2]]["status"] == "under_review"
    assert (await harness.client.get("/v1/referrals/flagged", headers=token(alice))).status_code == 403

    # Under review: an order meanwhile qualifies nothing yet.
    held = same_device[2]
    order = completed(held)
    await harness.send_order(order)
    await asyncio.sleep(1.5)
    assert harness.events.of("referral.qualified", invitee_id=held) == []
    statuses = {i["status"] for i in (await harness.me(alice))["invitees"]}
    assert "under_review" in statuses

    # Approval: the held-back bound, then the qualification that happened meanwhile.
    approved = await harness.client.post(f"/v1/referrals/{held}/review", json={"decision": "approve"},
                                         headers=ADMIN)
    assert approved.status_code == 200, approved.text
    assert approved.json()["decision"] == "approve" and approved.json()["status"] == "qualified"
    await harness.events.wait("referral.bound", invitee_id=held)
    [qualified] = await harness.events.wait("referral.qualified", invitee_id=held)
    assert qualified["data"]["order_id"] == order["data"]["order_id"]
    assert qualified["data"]["qualified_count"] == 1
    again = await harness.client.post(f"/v1/referrals/{held}/review", json={"decision": "approve"}, headers=ADMIN)
    assert again.status_code == 200
    conflict = await harness.client.post(f"/v1/referrals/{held}/review", json={"decision": "reject"},
                                         headers=ADMIN)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "already_reviewed"

    # Rejection: the referral ends; an order never qualifies it.
    rejected_one = same_ip[4]
    rejected = await harness.client.post(f"/v1/referrals/{rejected_one}/review", json={"decision": "reject"},
                                         headers=ADMIN)
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    await harness.send_order(completed(rejected_one))
    await harness.events.settle()
    assert harness.events.of("referral.qualified", invitee_id=rejected_one) == []
    assert harness.events.of("referral.bound", invitee_id=rejected_one) == []
    mine_now = {i["status"] for i in (await harness.me(alice))["invitees"]}
    assert {"rejected", "qualified", "bound"} <= mine_now
    listed = await harness.client.get("/v1/referrals/flagged", headers=ADMIN)
    assert not [i for i in listed.json()["items"] if i["inviter_id"] == alice]

    # Review errors.
    unknown = await harness.client.post("/v1/referrals/nobody/review", json={"decision": "approve"}, headers=ADMIN)
    assert unknown.status_code == 404
    not_flagged = await harness.client.post(f"/v1/referrals/{same_device[0]}/review",
                                            json={"decision": "approve"}, headers=ADMIN)
    assert not_flagged.status_code == 409 and not_flagged.json()["error"]["code"] == "not_flagged"
    forbidden = await harness.client.post(f"/v1/referrals/{held}/review", json={"decision": "approve"},
                                          headers=token(alice))
    assert forbidden.status_code == 403
    invalid = await harness.client.post(f"/v1/referrals/{held}/review", json={"decision": "maybe"}, headers=ADMIN)
    assert invalid.status_code == 422


async def test_leaderboard_counts_qualified_invites_in_the_period(harness: Harness) -> None:
    leader, second = uid("lead"), uid("second")
    leader_code, second_code = await harness.code_of(leader), await harness.code_of(second)
    for inviter_code, count in ((leader_code, 3), (second_code, 2)):
        for _ in range(count):
            invitee = uid("lb")
            await harness.send_user(registered(invitee, referral_code=inviter_code))
            await harness.wait_binding(invitee)
            await harness.send_order(completed(invitee))
            await harness.events.wait("referral.qualified", invitee_id=invitee)
    for period in ("day", "week", "month"):
        response = await harness.client.get(f"/v1/referrals/leaderboard?period={period}", headers=token(second))
        assert response.status_code == 200, response.text
        entries = response.json()["entries"]
        ours = [e for e in entries if e["inviter"] in (f"{leader[0]}***{leader[-1]}", f"{second[0]}***{second[-1]}")]
        mine = [e for e in entries if e["is_you"]]
        assert mine and mine[0]["qualified_invites"] == 2 and mine[0]["inviter"] == f"{second[0]}***{second[-1]}"
        assert any(e["qualified_invites"] == 3 and not e["is_you"] for e in ours)
        assert [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
        assert [e["qualified_invites"] for e in entries] == sorted((e["qualified_invites"] for e in entries),
                                                                   reverse=True)
        assert all(leader not in str(e) and second not in str(e) for e in entries)
    bad = await harness.client.get("/v1/referrals/leaderboard?period=year", headers=token(second))
    assert bad.status_code == 422


async def test_openapi_lists_every_endpoint_with_examples(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    expected = {("/v1/referral-codes", "post"), ("/v1/referrals", "post"), ("/v1/me/referrals", "get"),
                ("/v1/referrals/leaderboard", "get"), ("/v1/referrals/flagged", "get"),
                ("/v1/referrals/{invitee_id}/review", "post")}
    assert expected <= {(path, method) for path, ops in spec["paths"].items() for method in ops}
    schemas = spec["components"]["schemas"]
    for name in ("ReferralCodeOut", "BindIn", "BindingOut", "MyReferralsOut", "LeaderboardOut", "FlaggedListOut",
                 "ReviewIn", "ReviewOut"):
        assert schemas[name].get("examples"), f"{name} has no example"
