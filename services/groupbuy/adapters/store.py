"""MongoDB repository of the group-buy service: the only code that talks to the store.

Every decision is an insert with a deterministic unique ``_id`` (the loser of a race gets a
duplicate-key error); status fields on group and seat documents are caches for cheap due-work
queries, never the decision of record. Documents carrying events use the same-document outbox.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.groupbuy.domain.group import Seat, SeatOutcome
from shared.mongo import Document, Indexes, insert_once

CAMPAIGNS = "campaigns"
GROUPS = "groups"  # _id=group_id; outbox: group_opened; status cache open/formed/failed
MEMBERS = "members"  # _id=<group_id>|<user_id>: one seat per user per group
SEATS = "seats"  # _id=<group_id>:<slot>:<generation>; state cache held/paid/released
JOINS = "joins"  # _id=seat_id: the join confirmed (claims taken); outbox: member_joined
SEAT_OUTCOMES = "seat_outcomes"  # _id=seat_id: paid xor released; outbox: member_paid | seat_released
GROUP_OUTCOMES = "group_outcomes"  # _id=group_id: formed xor failed; outbox: group_formed | group_failed
REJECTIONS = "payment_rejections"  # _id=order_id; outbox: payment_rejected
BUYERS = "buyers"  # _id=user_id: the user has a completed order (new-users-only campaigns)
QUOTA_CLAIMS = "quota_claims"  # _id=<scope>#<k>: unit k of a bounded quota (stock, per-user limit)
QUOTA_RETURNS = "quota_returns"  # _id=<scope>#return#<holder>: the holder's unit given back

OUTBOX_COLLECTIONS = [GROUPS, JOINS, SEAT_OUTCOMES, GROUP_OUTCOMES, REJECTIONS]

# One index per ``Indexes`` entry: FerretDB 1.24 closes the connection when one ``createIndexes``
# command with several indexes meets a collection that already has them (every restart), while
# creating them one by one is idempotent.
_INDEX_KEYS: list[tuple[str, list[tuple[str, int]]]] = [
    (GROUPS, [("status", ASCENDING), ("deadline", ASCENDING)]),  # due groups
    (GROUPS, [("campaign_id", ASCENDING), ("status", ASCENDING), ("deadline", ASCENDING)]),  # open-groups list
    (SEATS, [("group_id", ASCENDING)]),
    (SEATS, [("state", ASCENDING), ("payment_deadline", ASCENDING)]),  # due seats
    (SEAT_OUTCOMES, [("group_id", ASCENDING)]),
    (JOINS, [("group_id", ASCENDING)]),
    (GROUP_OUTCOMES, [("finalized", ASCENDING), ("decided_at", ASCENDING)]),  # unfinished outcomes
    (QUOTA_CLAIMS, [("scope", ASCENDING), ("holder", ASCENDING)]),
    (QUOTA_RETURNS, [("scope", ASCENDING)]),
    (REJECTIONS, [("group_id", ASCENDING)]),
]
INDEXES = [Indexes(collection, [IndexModel(keys)]) for collection, keys in _INDEX_KEYS]


def seat_from_doc(doc: Mapping[str, Any]) -> Seat:
    return Seat(doc["_id"], doc["group_id"], doc["slot"], doc["generation"], doc["user_id"], doc["joined_at"],
                doc["payment_deadline"])


def seat_to_doc(seat: Seat, campaign_id: str) -> Document:
    return {"_id": seat.seat_id, "group_id": seat.group_id, "campaign_id": campaign_id, "slot": seat.slot,
            "generation": seat.generation, "user_id": seat.user_id, "joined_at": seat.joined_at,
            "payment_deadline": seat.payment_deadline, "state": "held"}


def outcome_from_doc(doc: Mapping[str, Any]) -> SeatOutcome:
    return SeatOutcome(doc["_id"], doc["outcome"], doc.get("order_id"), doc.get("reason"), doc.get("amount"),
                       doc.get("source_event_id"))


class GroupbuyStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db

    # ------------------------------------------------------------ campaigns
    async def insert_campaign(self, doc: Document) -> bool:
        return await insert_once(self.db[CAMPAIGNS], doc)

    async def campaign(self, campaign_id: str) -> Document | None:
        return await self.db[CAMPAIGNS].find_one({"_id": campaign_id})

    # ------------------------------------------------------------ groups
    async def insert_group(self, doc: Document) -> bool:
        return await insert_once(self.db[GROUPS], doc)

    async def group(self, group_id: str) -> Document | None:
        return await self.db[GROUPS].find_one({"_id": group_id})

    async def set_group_status(self, group_id: str, status: str) -> None:
        await self.db[GROUPS].update_one({"_id": group_id}, {"$set": {"status": status}})

    async def open_groups(self, campaign_id: str, now: datetime, limit: int) -> list[Document]:
        cursor = self.db[GROUPS].find(
            {"campaign_id": campaign_id, "status": "open", "deadline": {"$gt": now}}).sort("deadline", 1)
        return [doc async for doc in cursor.limit(limit)]

    async def due_groups(self, now: datetime, limit: int) -> list[Document]:
        cursor = self.db[GROUPS].find({"status": "open", "deadline": {"$lte": now}}).sort("deadline", 1)
        return [doc async for doc in cursor.limit(limit)]

    # ------------------------------------------------------------ membership and seats
    async def insert_member(self, group_id: str, user_id: str, attempt: str, now: datetime) -> bool:
        return await insert_once(self.db[MEMBERS], {"_id": f"{group_id}|{user_id}", "group_id": group_id,
                                                    "user_id": user_id, "attempt": attempt, "at": now})

    async def drop_member(self, group_id: str, user_id: str, attempt: str) -> None:
        """Undo our own membership claim of a refused join (only the attempt that inserted it)."""
        await self.db[MEMBERS].delete_one({"_id": f"{group_id}|{user_id}", "attempt": attempt})

    async def is_member(self, group_id: str, user_id: str) -> bool:
        return await self.db[MEMBERS].find_one({"_id": f"{group_id}|{user_id}"}, {"_id": 1}) is not None

    async def insert_seat(self, doc: Document) -> bool:
        return await insert_once(self.db[SEATS], doc)

    async def seats(self, group_id: str) -> list[Seat]:
        return [seat_from_doc(d) async for d in self.db[SEATS].find({"group_id": group_id})]

    async def seat_docs(self, group_id: str) -> list[Document]:
        return [d async for d in self.db[SEATS].find({"group_id": group_id})]

    async def due_seats(self, now: datetime, limit: int) -> list[Document]:
        cursor = self.db[SEATS].find({"state": "held", "payment_deadline": {"$lte": now}}).sort("payment_deadline", 1)
        return [doc async for doc in cursor.limit(limit)]

    async def set_seat_state(self, seat_id: str, state: str) -> None:
        await self.db[SEATS].update_one({"_id": seat_id}, {"$set": {"state": state}})

    async def insert_join(self, doc: Document) -> bool:
        return await insert_once(self.db[JOINS], doc)

    async def confirmed_seat_ids(self, group_id: str) -> set[str]:
        return {d["_id"] async for d in self.db[JOINS].find({"group_id": group_id}, {"_id": 1})}

    async def insert_seat_outcome(self, doc: Document) -> bool:
        return await insert_once(self.db[SEAT_OUTCOMES], doc)

    async def seat_outcome(self, seat_id: str) -> SeatOutcome | None:
        doc = await self.db[SEAT_OUTCOMES].find_one({"_id": seat_id})
        return outcome_from_doc(doc) if doc else None

    async def seat_outcomes(self, group_id: str) -> dict[str, SeatOutcome]:
        return {d["_id"]: outcome_from_doc(d) async for d in self.db[SEAT_OUTCOMES].find({"group_id": group_id})}

    # ------------------------------------------------------------ group outcomes and rejections
    async def insert_group_outcome(self, doc: Document) -> bool:
        return await insert_once(self.db[GROUP_OUTCOMES], doc)

    async def group_outcome(self, group_id: str) -> Document | None:
        return await self.db[GROUP_OUTCOMES].find_one({"_id": group_id})

    async def unfinalized_outcomes(self, limit: int) -> list[Document]:
        return [d async for d in self.db[GROUP_OUTCOMES].find({"finalized": False}).limit(limit)]

    async def mark_finalized(self, group_id: str) -> None:
        await self.db[GROUP_OUTCOMES].update_one({"_id": group_id}, {"$set": {"finalized": True}})

    async def insert_rejection(self, doc: Document) -> bool:
        return await insert_once(self.db[REJECTIONS], doc)

    # ------------------------------------------------------------ buyers
    async def record_buyer(self, user_id: str, order_id: str, at: datetime) -> bool:
        return await insert_once(self.db[BUYERS], {"_id": user_id, "first_order_id": order_id, "at": at})

    async def is_buyer(self, user_id: str) -> bool:
        return await self.db[BUYERS].find_one({"_id": user_id}, {"_id": 1}) is not None

    # ------------------------------------------------------------ bounded quotas (stock, per-user limits)
    async def claim(self, scope: str, capacity: int, holder: str) -> bool:
        """Take one unit of ``scope`` for ``holder``; False when none is left.

        Units are the keys ``<scope>#1 .. #n``; a key k is inserted only while k <= capacity + returns
        seen. Keys are unique, returns only grow and each holder returns at most once, so claims -
        returns (the units in use) never exceeds ``capacity`` whatever the concurrency (no
        read-then-update anywhere). Keys are probed at random so that concurrent claimers rarely
        collide; when the probes miss (few units left), the free keys are read and tried in turn."""
        claims, returns = self.db[QUOTA_CLAIMS], self.db[QUOTA_RETURNS]

        async def take(k: int) -> bool:
            return await insert_once(claims, {"_id": f"{scope}#{k}", "scope": scope, "k": k, "holder": holder})

        for _probe in range(3):  # fast path, no counting: any key up to capacity is always allowed
            if await take(random.randint(1, capacity)):
                return True
        for _ in range(2):
            limit = capacity + await returns.count_documents({"scope": scope})
            if await claims.count_documents({"scope": scope}) >= limit:
                continue
            for _probe in range(4):
                if await take(random.randint(1, limit)):
                    return True
            taken = {d["k"] async for d in claims.find({"scope": scope}, {"k": 1, "_id": 0})}
            free = [k for k in range(1, limit + 1) if k not in taken]
            random.shuffle(free)
            for k in free:
                if await take(k):
                    return True
        return False

    async def give_back(self, scope: str, holder: str) -> bool:
        """Return ``holder``'s unit if it took one (idempotent: keyed by the holder)."""
        if await self.db[QUOTA_CLAIMS].find_one({"scope": scope, "holder": holder}, {"_id": 1}) is None:
            return False
        return await insert_once(self.db[QUOTA_RETURNS], {"_id": f"{scope}#return#{holder}", "scope": scope,
                                                          "holder": holder})

    async def in_use(self, scope: str) -> int:
        taken = await self.db[QUOTA_CLAIMS].count_documents({"scope": scope})
        given_back = await self.db[QUOTA_RETURNS].count_documents({"scope": scope})
        return taken - given_back
