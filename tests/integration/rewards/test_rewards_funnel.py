"""The live funnel projection of the rewards service against the real servers: every referral and
group-buy event counted once by its id (duplicates and a full replay change nothing), coupons and
commission sums read from the rewards store, the JSON endpoint admin-only, the page served."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from services.ops.replay import replay
from services.rewards.bootstrap import build_app
from services.rewards.settings import RewardsSettings
from shared.events.envelope import utcnow
from shared.settings import LOCAL_DEV_JWT_SECRET
from tests.support.events import Producer, cloud_event, now_rfc3339, order_refunded
from tests.support.services import eventually, running, settings_for, token

pytestmark = pytest.mark.integration

ADMIN = token("ops", "admin")


def referral(event_type: str, inviter: str, invitee: str, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inviter_id": inviter, "invitee_id": invitee}
    if event_type == "referral.bound":
        body |= {"code": "CODE" + inviter[:6], "bound_at": now_rfc3339(), "channel": "app"}
    elif event_type == "referral.qualified":
        body |= {"order_id": f"o-{invitee}", "qualified_count": data["count"], "qualified_at": now_rfc3339(),
                 "source_event_id": str(uuid.uuid4())}
    elif event_type == "referral.disqualified":
        body |= {"order_id": f"o-{invitee}", "reason": "full_refund_in_hold", "qualified_count": data["count"],
                 "disqualified_at": now_rfc3339(), "source_event_id": str(uuid.uuid4())}
    elif event_type == "referral.flagged":
        body |= {"reasons": ["shared_device"], "flagged_at": now_rfc3339()}
    return cloud_event(event_type, body, source="urn:pinwheel:referral")


def group(event_type: str, group_id: str, user: str) -> dict[str, Any]:
    base = {"group_id": group_id, "campaign_id": "camp-live"}
    deadline = (utcnow() + timedelta(hours=1)).isoformat()
    data: dict[str, Any] = {
        "groupbuy.group_opened": {"initiator_id": user, "deadline": deadline, "opened_at": now_rfc3339()},
        "groupbuy.member_joined": {"user_id": user, "seat": 2, "seat_payment_deadline": deadline,
                                   "joined_at": now_rfc3339()},
        "groupbuy.group_formed": {"initiator_id": user, "tier": {"size": 2, "percent_off": 20}, "list_price": 10000,
                                  "members": [{"user_id": user, "seat": 1, "order_id": f"o-{group_id}",
                                               "price": 8000}], "formed_at": now_rfc3339()},
        "groupbuy.group_failed": {"initiator_id": user, "reason": "deadline", "refund_order_ids": [],
                                  "failed_at": now_rfc3339()},
    }[event_type]
    return cloud_event(event_type, base | data, source="urn:pinwheel:groupbuy")


async def test_funnel_counts_each_event_once_and_sums_the_ledger(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    async with running(build_app, settings) as svc, Producer(infra.bootstrap_servers, settings.topic_prefix) as p:
        started = utcnow() - timedelta(seconds=5)
        events: list[tuple[str, dict[str, Any], str]] = []
        for i in range(3):
            events.append(("referral.events", referral("referral.bound", "ann", f"inv-{i}"), "ann"))
        # qualified counts 6 and 7: the 6th and 7th qualified invites earn a commission each
        for i, count in ((0, 6), (1, 7)):
            events.append(("referral.events", referral("referral.qualified", "ann", f"inv-{i}", count=count), "ann"))
        events.append(("referral.events", referral("referral.flagged", "ann", "inv-9"), "ann"))
        for g in ("g-a", "g-b"):
            events.append(("groupbuy.events", group("groupbuy.group_opened", g, f"init-{g}"), g))
        events.append(("groupbuy.events", group("groupbuy.member_joined", "g-a", "joiner"), "g-a"))
        events.append(("groupbuy.events", group("groupbuy.group_formed", "g-a", "init-g-a"), "g-a"))
        events.append(("groupbuy.events", group("groupbuy.group_failed", "g-b", "init-g-b"), "g-b"))
        for topic, event, key in events:
            await p.send(topic, event, key=key)
            await p.send(topic, event, key=key)  # every one delivered twice

        async def funnel_when(check: Any) -> Any:
            response = await svc.client.get("/v1/stats/funnel", headers=ADMIN)
            assert response.status_code == 200, response.text
            body = response.json()
            return body if check(body) else None

        body = await eventually(lambda: funnel_when(
            lambda b: b["groupbuy"]["failed"] == 1 and b["referral"]["qualified"] == 2
            and b["referral"]["flagged"] == 1  # after the qualifications on the same key
            and b["commissions"]["credited_count"] == 2 and b["coupons"]["issued"] == 3 * 2 + 2 + 1),
            timeout=60, message="every event counted")
        assert body["referral"] == {"bound": 3, "qualified": 2, "disqualified": 0, "net_qualified": 2,
                                    "flagged": 1, "milestones": 0}
        assert body["groupbuy"] == {"opened": 2, "members_joined": 1, "members_paid": 0, "formed": 1, "failed": 1,
                                    "open_now": 0, "seats_released": 0}
        assert body["coupons"] == {"issued": 9, "redeemed": 0, "revoked": 0}
        assert body["commissions"] == {"credited": 1000, "reversed": 0, "withdrawn": 0, "credited_count": 2,
                                       "reversed_count": 0, "withdrawn_count": 0, "currency": "CNY"}

        # a disqualification: counted, its commission reversed and its inviter coupon revoked
        await p.send("referral.events", referral("referral.disqualified", "ann", "inv-1", count=6), key="ann")
        # an order event is not a funnel event (and a refund of an order without coupons changes nothing)
        await p.send("orders.events", order_refunded("inv-1", "o-inv-1", 5000), key="inv-1")
        # the tallies are separate reads, not one snapshot: wait until both show the reversal
        body = await eventually(lambda: funnel_when(lambda b: b["commissions"]["reversed_count"] == 1
                                                    and b["coupons"]["revoked"] == 1
                                                    and b["commissions"]["reversed"] != 0),
                                timeout=60, message="the reversal")
        assert body["referral"]["disqualified"] == 1 and body["referral"]["net_qualified"] == 1
        assert body["commissions"]["reversed"] == 500
        assert body["coupons"]["revoked"] == 1
        types = [d["type"] async for d in svc.db["funnel_events"].find({})]
        assert len(types) == len(events) + 1, "one document per distinct event id"

        # a full replay of every topic in the window records nothing new
        summary = await replay(
            "rewards", started, kafka_bootstrap_servers=infra.bootstrap_servers, mongodb_uri=infra.mongodb_uri,
            topic_prefix=settings.topic_prefix, mongodb_database=settings.mongodb_database,
            consumer_group=settings.consumer_group, environment="test", jwt_secret=LOCAL_DEV_JWT_SECRET)
        assert summary.failures == 0 and summary.effects_applied == 0, summary.as_dict()
        after = (await svc.client.get("/v1/stats/funnel", headers=ADMIN)).json()
        assert {k: v for k, v in after.items() if k != "as_of"} == {k: v for k, v in body.items() if k != "as_of"}


async def test_funnel_is_for_operators_and_the_page_is_served(infra, namespace):
    settings = settings_for(RewardsSettings, infra, namespace)
    async with running(build_app, settings) as svc:
        assert (await svc.client.get("/v1/stats/funnel")).status_code == 401
        refused = await svc.client.get("/v1/stats/funnel", headers=token("alice"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"]
        page = await svc.client.get("/live")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert 'data-stat="referral.bound"' in page.text
        empty = (await svc.client.get("/v1/stats/funnel", headers=ADMIN)).json()
        assert empty["referral"]["bound"] == 0 and empty["commissions"]["credited"] == 0
