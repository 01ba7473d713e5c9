"""The scheduler loop inside the service (not driven by the test): windows and deadlines enforced
on its own, with two replicas on one store deciding each group once."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest

from services.groupbuy.adapters import store as st
from services.groupbuy.bootstrap import build_app
from services.groupbuy.handlers import to_millis
from services.groupbuy.settings import GroupbuySettings
from shared.clock import SettableClock
from shared.events.envelope import utcnow
from tests.support.services import eventually, running, settings_for, token

from .conftest import ADMIN

pytestmark = pytest.mark.integration


async def test_two_replicas_with_their_loops_release_seats_and_close_groups_once(infra, namespace):
    clock = SettableClock(to_millis(utcnow()))
    settings = settings_for(GroupbuySettings, infra, namespace, scheduler_interval_seconds=0.1,
                            settle_grace_seconds=0)
    other = settings_for(GroupbuySettings, infra, namespace, scheduler_interval_seconds=0.1, settle_grace_seconds=0,
                         consumer_group=f"{namespace}-replica-b-unused")
    async with running(partial(build_app, clock=clock), settings) as a, \
            running(partial(build_app, clock=clock), other) as b:
        now = clock.now()
        body = {"sku": "s", "list_price": 10000, "tiers": [{"size": 2, "percent_off": 20}],
                "starts_at": (now - timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(days=3)).isoformat(),
                "stock": 50}
        campaign = (await a.client.post("/v1/campaigns", json=body, headers=ADMIN)).json()
        groups = []
        for i in range(6):
            opened = await b.client.post(f"/v1/campaigns/{campaign['campaign_id']}/groups", headers=token(f"u{i}"))
            groups.append(opened.json()["group_id"])
        clock.advance(timedelta(minutes=16))
        await eventually(lambda: _count(a.db, st.SEAT_OUTCOMES, {"outcome": "released"}, 6), message="released")
        clock.advance(timedelta(days=1))
        await eventually(lambda: _count(a.db, st.GROUP_OUTCOMES, {"finalized": True}, 6), message="closed")
        assert await a.db[st.GROUP_OUTCOMES].count_documents({"outcome": "failed"}) == 6
        assert await a.db[st.SEAT_OUTCOMES].count_documents({}) == 6
        view = await a.client.get(f"/v1/groups/{groups[0]}", headers=token("u0"))
        assert view.json()["status"] == "failed"


async def _count(db, collection, query, expected):
    return await db[collection].count_documents(query) == expected
