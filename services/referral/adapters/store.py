"""MongoDB repository of the referral service: the only code that talks to the store.

Every decision is an insert with a deterministic unique key (FerretDB has neither multi-document
transactions nor atomic updates): a code per user, a registration per user, a binding per invitee,
a review per invitee, a daily slot per (inviter, day, invitee), a ledger entry per (inviter, seq)
and per decision (``q:<invitee>``, ``d:<invitee>``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.mongo import Document, Indexes, insert_once

CODES = "codes"
REGISTRATIONS = "registrations"
BINDINGS = "bindings"
BINDING_REFUSALS = "binding_refusals"
DAILY_SLOTS = "daily_binding_slots"
ORDERS = "orders"
FULL_REFUNDS = "full_refunds"
REVIEWS = "reviews"
LEDGER = "qualification_ledger"

OUTBOX_COLLECTIONS = [BINDINGS, REVIEWS, LEDGER]

_INDEXES_BY_COLLECTION = [
    Indexes(CODES, [IndexModel([("code", ASCENDING)], unique=True, name="code_unique")]),
    Indexes(BINDINGS, [
        IndexModel([("inviter_id", ASCENDING), ("bound_at", ASCENDING)], name="by_inviter"),
        IndexModel([("inviter_id", ASCENDING), ("device_id", ASCENDING)], name="by_inviter_device"),
        IndexModel([("inviter_id", ASCENDING), ("ip", ASCENDING)], name="by_inviter_ip"),
        IndexModel([("flagged", ASCENDING), ("bound_at", ASCENDING)], name="by_flagged"),
    ]),
    Indexes(DAILY_SLOTS, [
        IndexModel([("inviter_id", ASCENDING), ("day", ASCENDING), ("invitee_id", ASCENDING)], unique=True,
                   name="slot_per_invitee"),
        IndexModel([("inviter_id", ASCENDING), ("day", ASCENDING), ("n", DESCENDING)], name="last_slot"),
    ]),
    Indexes(ORDERS, [IndexModel([("user_id", ASCENDING), ("completed_at", ASCENDING)], name="by_user")]),
    Indexes(LEDGER, [
        IndexModel([("entry_key", ASCENDING)], unique=True, name="one_entry_per_decision"),
        IndexModel([("inviter_id", ASCENDING), ("seq", DESCENDING)], name="last_entry"),
        IndexModel([("kind", ASCENDING), ("at", ASCENDING)], name="by_kind_time"),
        IndexModel([("invitee_id", ASCENDING)], name="by_invitee"),
    ]),
]

# One model per createIndexes call: FerretDB 1.24 drops the connection when a single createIndexes
# command names several indexes that all exist already (every restart after the first).
INDEXES = [Indexes(spec.collection, [model]) for spec in _INDEXES_BY_COLLECTION for model in spec.models]

MAX_SEQUENCE_RETRIES = 1000


class SequenceContention(RuntimeError):
    """Lost the race for the next sequence number too many times (never expected in practice)."""


class ReferralStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db

    # ------------------------------------------------------------ codes

    async def code_of(self, user_id: str) -> Document | None:
        return await self.db[CODES].find_one({"_id": user_id})

    async def owner_of_code(self, code: str) -> Document | None:
        return await self.db[CODES].find_one({"code": code})

    async def insert_code(self, user_id: str, code: str, now: datetime) -> str:
        """'created', 'user_has_one' (another request won) or 'code_taken' (collision: retry)."""
        try:
            await self.db[CODES].insert_one({"_id": user_id, "code": code, "created_at": now})
        except DuplicateKeyError:
            if await self.code_of(user_id) is not None:
                return "user_has_one"
            return "code_taken"
        return "created"

    # ------------------------------------------------------------ registrations and orders (facts)

    async def remember_registration(self, document: Document) -> Document:
        """The first user.registered seen for a user stands; returns it."""
        if await insert_once(self.db[REGISTRATIONS], document):
            return document
        existing = await self.registration_of(document["_id"])
        assert existing is not None
        return existing

    async def registration_of(self, user_id: str) -> Document | None:
        return await self.db[REGISTRATIONS].find_one({"_id": user_id})

    async def remember_order(self, document: Document) -> None:
        await insert_once(self.db[ORDERS], document)

    async def earliest_order_of(self, user_id: str) -> Document | None:
        return await self.db[ORDERS].find_one({"user_id": user_id}, sort=[("completed_at", 1), ("_id", 1)])

    async def earliest_qualifying_order(self, user_id: str, since: datetime, min_amount: int) -> Document | None:
        return await self.db[ORDERS].find_one(
            {"user_id": user_id, "completed_at": {"$gte": since}, "amount": {"$gte": min_amount}},
            sort=[("completed_at", 1), ("_id", 1)])

    async def remember_full_refund(self, document: Document) -> None:
        await insert_once(self.db[FULL_REFUNDS], document)

    async def full_refund_of(self, order_id: str) -> Document | None:
        return await self.db[FULL_REFUNDS].find_one({"_id": order_id})

    # ------------------------------------------------------------ bindings

    async def binding_of(self, invitee_id: str) -> Document | None:
        return await self.db[BINDINGS].find_one({"_id": invitee_id})

    async def insert_binding(self, document: Document) -> bool:
        return await insert_once(self.db[BINDINGS], document)

    async def record_refusal(self, document: Document) -> None:
        await insert_once(self.db[BINDING_REFUSALS], document)

    async def refusal(self, refusal_id: str) -> Document | None:
        return await self.db[BINDING_REFUSALS].find_one({"_id": refusal_id})

    async def inviter_chain(self, inviter_id: str, max_depth: int) -> list[str]:
        """The inviter's inviter, their inviter, ... (stops at a repeat or ``max_depth``)."""
        chain: list[str] = []
        current = inviter_id
        for _ in range(max_depth):
            binding = await self.db[BINDINGS].find_one({"_id": current}, {"inviter_id": 1})
            if binding is None or binding["inviter_id"] in chain:
                break
            current = binding["inviter_id"]
            chain.append(current)
        return chain

    async def invitees_sharing(self, inviter_id: str, field: str, value: str | None, invitee_id: str) -> int:
        if value is None:
            return 0
        return await self.db[BINDINGS].count_documents(
            {"inviter_id": inviter_id, field: value, "_id": {"$ne": invitee_id}})

    async def bindings_of_inviter(self, inviter_id: str, limit: int = 1000) -> list[Document]:
        cursor = self.db[BINDINGS].find({"inviter_id": inviter_id}, {"outbox": 0}).sort("bound_at", 1)
        return [doc async for doc in cursor.limit(limit)]

    async def flagged_bindings(self, limit: int = 500) -> list[Document]:
        cursor = self.db[BINDINGS].find({"flagged": True}, {"outbox": 0}).sort("bound_at", 1)
        return [doc async for doc in cursor.limit(limit)]

    async def take_daily_slot(self, inviter_id: str, day: str, invitee_id: str, now: datetime) -> int:
        """This invitee's 1-based position among the inviter's bindings of ``day``, decided by insert
        (a retry for the same invitee gets the same slot)."""
        collection = self.db[DAILY_SLOTS]
        for _ in range(MAX_SEQUENCE_RETRIES):
            mine = await collection.find_one({"inviter_id": inviter_id, "day": day, "invitee_id": invitee_id})
            if mine is not None:
                return int(mine["n"])
            last = await collection.find_one({"inviter_id": inviter_id, "day": day}, sort=[("n", -1)])
            n = int(last["n"]) + 1 if last else 1
            if await insert_once(collection, {"_id": f"{inviter_id}:{day}:{n}", "inviter_id": inviter_id, "day": day,
                                              "n": n, "invitee_id": invitee_id, "taken_at": now}):
                return n
        raise SequenceContention(f"daily slot of {inviter_id}")

    # ------------------------------------------------------------ reviews

    async def review_of(self, invitee_id: str) -> Document | None:
        return await self.db[REVIEWS].find_one({"_id": invitee_id})

    async def reviews_of(self, invitee_ids: list[str]) -> dict[str, Document]:
        cursor = self.db[REVIEWS].find({"_id": {"$in": invitee_ids}}, {"outbox": 0})
        return {doc["_id"]: doc async for doc in cursor}

    async def insert_review(self, document: Document) -> bool:
        return await insert_once(self.db[REVIEWS], document)

    # ------------------------------------------------------------ qualification ledger

    async def ledger_entry(self, entry_key: str) -> Document | None:
        return await self.db[LEDGER].find_one({"entry_key": entry_key})

    async def last_ledger_entry(self, inviter_id: str) -> Document | None:
        return await self.db[LEDGER].find_one({"inviter_id": inviter_id}, sort=[("seq", -1)])

    async def append_to_ledger(
        self, inviter_id: str, entry_key: str, build: Callable[[Document | None], Document],
    ) -> tuple[Document, bool]:
        """Append the entry for one decision (``entry_key``) at the inviter's next sequence number.

        Two writers racing for the same number: one insert wins, the other re-reads and builds the
        next entry from the winner's state. The same decision twice: the unique ``entry_key``
        refuses the second, which returns the first. Returns (entry, inserted now)."""
        collection = self.db[LEDGER]
        for _ in range(MAX_SEQUENCE_RETRIES):
            existing = await self.ledger_entry(entry_key)
            if existing is not None:
                return existing, False
            document = build(await self.last_ledger_entry(inviter_id))
            document.update(_id=f"{inviter_id}:{document['seq']}", inviter_id=inviter_id, entry_key=entry_key)
            if await insert_once(collection, document):
                return document, True
        raise SequenceContention(f"ledger of {inviter_id}")

    async def ledger_entries_for(self, invitee_ids: list[str]) -> list[Document]:
        cursor = self.db[LEDGER].find({"invitee_id": {"$in": invitee_ids}}, {"outbox": 0})
        return [doc async for doc in cursor]

    async def qualifications_since(self, since: datetime, limit: int = 100_000) -> list[Document]:
        cursor = self.db[LEDGER].find({"kind": "qualified", "at": {"$gte": since}},
                                      {"inviter_id": 1, "invitee_id": 1, "at": 1})
        return [doc async for doc in cursor.limit(limit)]

    async def disqualified_among(self, invitee_ids: list[str]) -> set[str]:
        cursor = self.db[LEDGER].find({"kind": "disqualified", "invitee_id": {"$in": invitee_ids}},
                                      {"invitee_id": 1})
        return {doc["invitee_id"] async for doc in cursor}


def project(document: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    return {name: document.get(name) for name in fields}
