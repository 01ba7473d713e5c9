"""The funnel projection's store: one document per referral/group-buy event seen (keyed by the
event id, so duplicates, redeliveries and replays count once), plus read-only tallies over the
rewards collections (coupons, coupon transitions, ledger).

FerretDB 1.24 aggregation supports ``$sum``/``$count`` accumulators, one per ``$group``: every
tally here is a single ``$group`` with a single ``$sum``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.rewards.adapters.store import COUPONS, LEDGER, TRANSITIONS
from services.rewards.domain.funnel import Tallies
from shared.events import CloudEvent
from shared.mongo import Document, Indexes, insert_many_once, insert_once

FUNNEL_EVENTS = "funnel_events"

FUNNEL_INDEXES = [Indexes(FUNNEL_EVENTS, [IndexModel([("type", ASCENDING)])])]


def _funnel_document(event: CloudEvent[Any]) -> Document:
    return {"_id": event.id, "type": event.type, "time": event.time, "subject": event.subject}


class FunnelStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.events = db[FUNNEL_EVENTS]
        self.coupons = db[COUPONS]
        self.transitions = db[TRANSITIONS]
        self.ledger = db[LEDGER]

    async def record(self, event: CloudEvent[Any]) -> bool:
        """Count ``event`` once: False if its id was recorded already."""
        return await insert_once(self.events, _funnel_document(event))

    async def record_many(self, events: list[CloudEvent[Any]]) -> int:
        """``record`` for several events with one insert; returns how many were new."""
        return len(await insert_many_once(self.events, [_funnel_document(event) for event in events]))

    async def _sum_by(self, collection: Any, key: str, value: Any,
                      match: Mapping[str, Any] | None = None) -> dict[str, int]:
        pipeline: list[dict[str, Any]] = [{"$match": dict(match)}] if match else []
        pipeline.append({"$group": {"_id": f"${key}", "n": {"$sum": value}}})
        cursor = await collection.aggregate(pipeline)
        return {str(doc["_id"]): int(doc["n"]) async for doc in cursor if doc["_id"] is not None}

    async def tallies(self) -> Tallies:
        """One read per tally, one after the other (FerretDB has no snapshot reads and one
        accumulator per ``$group``): a change landing between two reads shows in the later one
        first, e.g. a reversal's count before its amount; the next refresh agrees."""
        return Tallies(
            events=await self._sum_by(self.events, "type", 1),
            coupons_issued=await self.coupons.count_documents({}),
            coupon_actions=await self._sum_by(self.transitions, "action", 1,
                                              {"action": {"$in": ["confirm", "revoke"]}}),
            ledger_amounts=await self._sum_by(self.ledger, "kind", "$amount"),
            ledger_counts=await self._sum_by(self.ledger, "kind", 1),
        )
