"""MongoDB repositories of the rewards service: the only code that talks to the store.

Every decision is an insert with a deterministic unique key (see ``shared.mongo``): coupons by
reward id, coupon transitions by ``code:version``, ledger entries by ``user:seq`` (and a unique
``ref`` per effect), budget claims by ``key:seq`` (and a unique claim per reward), refusals by
reward id. Fields on coupon documents named ``state`` are a cache of the latest transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.rewards.domain.budgets import BudgetUse
from services.rewards.domain.coupons import Coupon, CouponState, Transition
from services.rewards.domain.ledger import Entry, Hold, LedgerState
from shared.mongo import Document, Indexes, insert_many_once, insert_once

COUPONS = "coupons"
TRANSITIONS = "coupon_transitions"
LEDGER = "ledger"
BUDGET_CLAIMS = "budget_claims"
REFUSALS = "refusals"

OUTBOX_COLLECTIONS = (COUPONS, TRANSITIONS, LEDGER)

_INDEXES = [
    Indexes(COUPONS, [
        IndexModel([("code", ASCENDING)], unique=True),
        IndexModel([("user_id", ASCENDING), ("issued_at", ASCENDING)]),
        IndexModel([("referral", ASCENDING), ("rule", ASCENDING)]),
        # the reservation sweep's lookup: a top-level flag, because FerretDB pushes no dotted path
        # (``state.status``) down to PostgreSQL and would read every coupon every sweep
        IndexModel([("reserved", ASCENDING)]),
    ]),
    Indexes(TRANSITIONS, [
        IndexModel([("code", ASCENDING), ("version", DESCENDING)]),
        IndexModel([("user_id", ASCENDING)]),
        IndexModel([("order_id", ASCENDING), ("action", ASCENDING)]),
    ]),
    Indexes(LEDGER, [
        IndexModel([("user_id", ASCENDING), ("seq", DESCENDING)]),
        IndexModel([("ref", ASCENDING)], unique=True),
        IndexModel([("source.referral", ASCENDING), ("kind", ASCENDING)]),
    ]),
    Indexes(BUDGET_CLAIMS, [
        IndexModel([("key", ASCENDING), ("seq", DESCENDING)]),
        IndexModel([("key", ASCENDING), ("claim", ASCENDING)], unique=True),
    ]),
    Indexes(REFUSALS, [IndexModel([("at", DESCENDING)])]),
]
# One index per createIndexes call: FerretDB 1.24 drops the connection when one call re-creates
# several indexes that exist already (every restart, every second replica).
INDEXES = [Indexes(spec.collection, [model]) for spec in _INDEXES for model in spec.models]


class SeqTaken(Exception):
    """Another writer appended this sequence number first: re-read and decide again."""


class AlreadyDone(Exception):
    """The effect's unique reference exists: it happened already."""


async def _insert_sequenced(collection: Any, doc: Document, unique: Document) -> None:
    """Insert a sequenced document that also has a unique effect reference; tell the two
    possible duplicate keys apart (the servers differ in the details they give)."""
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError as exc:
        key_pattern = (exc.details or {}).get("keyPattern") or {}
        if key_pattern:
            seq_taken = set(key_pattern) == {"_id"}
        else:  # no detail: if the effect's reference is absent, it was the sequence number
            seq_taken = await collection.find_one(unique, {"_id": 1}) is None
        if seq_taken:
            raise SeqTaken(doc["_id"]) from None
        raise AlreadyDone(str(unique)) from None


# ------------------------------------------------------------------ coupons


def coupon_from(doc: Document) -> Coupon:
    return Coupon(code=doc["code"], user_id=doc["user_id"], kind=doc["kind"], value=doc["value"],
                  threshold=doc["threshold"], issued_at=doc["issued_at"], expires_at=doc["expires_at"])


def state_doc(state: CouponState) -> Document:
    return {"version": state.version, "status": state.status, "order_id": state.order_id,
            "reserved_at": state.reserved_at, "history": list(state.history)}


def state_from(doc: Document | None) -> CouponState:
    if not doc:
        return CouponState()
    return CouponState(version=doc["version"], status=doc["status"], order_id=doc.get("order_id"),
                       reserved_at=doc.get("reserved_at"), history=tuple(doc.get("history", ())))


def reserved_before_query(cutoff: datetime) -> Document:
    """Coupons reserved at or before ``cutoff`` (the sweep's lookup; served by the ``reserved`` index)."""
    return {"reserved": True, "state.status": "reserved", "state.reserved_at": {"$lte": cutoff}}


class CouponStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.coupons = db[COUPONS]
        self.transitions = db[TRANSITIONS]

    async def insert_new(self, documents: Sequence[Document]) -> list[Document]:
        """Insert issued coupons in one round trip; returns those that were new."""
        new = await insert_many_once(self.coupons, documents)
        return [documents[i] for i in new]

    async def by_id(self, reward_id: str) -> Document | None:
        return await self.coupons.find_one({"_id": reward_id})

    async def by_code(self, code: str) -> Document | None:
        return await self.coupons.find_one({"code": code}, {"outbox": 0})

    async def latest_state(self, code: str) -> CouponState:
        doc = await self.transitions.find_one({"code": code}, sort=[("version", DESCENDING)])
        return state_from(doc["state"]) if doc else CouponState()

    async def append(self, coupon: Document, transition: Transition, extra: Document) -> Document:
        """Insert the transition as ``code:version``; SeqTaken if a concurrent one won."""
        doc: Document = {
            "_id": f"{coupon['code']}:{transition.version}", "code": coupon["code"],
            "user_id": coupon["user_id"], "version": transition.version, "action": transition.action,
            "order_id": transition.order_id, "at": transition.at, "reason": transition.reason,
            "state": state_doc(transition.state), **extra,
        }
        if not await insert_once(self.transitions, doc):
            raise SeqTaken(doc["_id"])
        return doc

    async def cache_state(self, code: str, state: CouponState) -> None:
        """Derived view for listing and the sweep; decisions always read the transitions."""
        await self.coupons.update_one({"code": code, "state.version": {"$lt": state.version}},
                                      {"$set": {"state": state_doc(state), "reserved": state.status == "reserved"}})

    async def for_user(self, user_id: str, limit: int = 1000) -> list[Document]:
        cursor = self.coupons.find({"user_id": user_id}, {"outbox": 0}).sort("issued_at", 1).limit(limit)
        return [d async for d in cursor]

    async def states_for_user(self, user_id: str) -> dict[str, CouponState]:
        latest: dict[str, Document] = {}
        async for doc in self.transitions.find({"user_id": user_id}, {"code": 1, "version": 1, "state": 1}):
            if doc["code"] not in latest or doc["version"] > latest[doc["code"]]["version"]:
                latest[doc["code"]] = doc
        return {code: state_from(doc["state"]) for code, doc in latest.items()}

    async def granted_for_referral(self, referral: str, rules: Sequence[str]) -> list[Document]:
        cursor = self.coupons.find({"referral": referral, "rule": {"$in": list(rules)}}, {"outbox": 0})
        return [d async for d in cursor]

    async def codes_redeemed_by(self, order_id: str) -> list[str]:
        cursor = self.transitions.find({"order_id": order_id, "action": "confirm"}, {"code": 1})
        return sorted({d["code"] async for d in cursor})

    async def reserved_before(self, cutoff: datetime, limit: int = 500) -> list[Document]:
        cursor = self.coupons.find(reserved_before_query(cutoff), {"outbox": 0}).limit(limit)
        return [d async for d in cursor]


# ------------------------------------------------------------------ ledger


def ledger_state_from(doc: Document | None) -> LedgerState:
    if not doc:
        return LedgerState()
    return LedgerState(seq=doc["seq"], balance=doc["balance_after"], withdrawn=doc["withdrawn_after"],
                       holds=tuple(Hold(h["ref"], h["amount"], h["available_at"]) for h in doc["holds_after"]))


def entry_from(doc: Document) -> Entry:
    return Entry(seq=doc["seq"], kind=doc["kind"], amount=doc["amount"], ref=doc["ref"], at=doc["at"],
                 available_at=doc.get("available_at"), reverses=doc.get("reverses"),
                 after=ledger_state_from(doc))


class LedgerStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.entries = db[LEDGER]

    async def last(self, user_id: str) -> LedgerState:
        doc = await self.entries.find_one({"user_id": user_id}, sort=[("seq", DESCENDING)])
        return ledger_state_from(doc)

    async def append(self, user_id: str, entry: Entry, extra: Document) -> Document:
        """Insert ``user:seq``. SeqTaken: a concurrent entry won that number; AlreadyDone: the
        effect (``ref``) is in the ledger already."""
        after = entry.after
        doc: Document = {
            "_id": f"{user_id}:{entry.seq}", "user_id": user_id, "seq": entry.seq, "kind": entry.kind,
            "amount": entry.amount, "ref": entry.ref, "at": entry.at, "available_at": entry.available_at,
            "reverses": entry.reverses, "balance_after": after.balance, "withdrawn_after": after.withdrawn,
            "holds_after": [{"ref": h.ref, "amount": h.amount, "available_at": h.available_at}
                            for h in after.holds],
            **extra,
        }
        await _insert_sequenced(self.entries, doc, {"ref": entry.ref})
        return doc

    async def has_ref(self, ref: str) -> bool:
        return await self.entries.find_one({"ref": ref}, {"_id": 1}) is not None

    async def for_user(self, user_id: str, limit: int = 1000) -> list[Document]:
        cursor = self.entries.find({"user_id": user_id}, {"outbox": 0}).sort("seq", -1).limit(limit)
        return [d async for d in cursor]

    async def credits_for_referral(self, referral: str) -> list[Document]:
        cursor = self.entries.find({"source.referral": referral, "kind": "credit"}, {"outbox": 0})
        return [d async for d in cursor]


# ------------------------------------------------------------------ budgets


class BudgetStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.claims = db[BUDGET_CLAIMS]

    async def use(self, key: str) -> tuple[int, BudgetUse]:
        doc = await self.claims.find_one({"key": key}, sort=[("seq", DESCENDING)])
        if not doc:
            return 0, BudgetUse()
        return doc["seq"], BudgetUse(doc["count_after"], doc["amount_after"])

    async def holds(self, key: str, reward_id: str) -> bool:
        """This reward claimed ``key`` and has not given it back."""
        found = {d["claim"] async for d in self.claims.find(
            {"key": key, "claim": {"$in": [f"claim:{reward_id}", f"release:{reward_id}"]}}, {"claim": 1})}
        return found == {f"claim:{reward_id}"}

    async def append(self, key: str, seq: int, kind: str, reward_id: str, value: int, after: BudgetUse,
                     at: datetime) -> None:
        """SeqTaken: a concurrent claim won ``seq``; AlreadyDone: this reward's claim (or release)
        on this key exists."""
        doc = {"_id": f"{key}:{seq}", "key": key, "seq": seq, "claim": f"{kind}:{reward_id}",
               "reward_id": reward_id, "value": value, "count_after": after.count,
               "amount_after": after.amount, "at": at}
        await _insert_sequenced(self.claims, doc, {"key": key, "claim": doc["claim"]})


# ------------------------------------------------------------------ refusals


class RefusalStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.refusals = db[REFUSALS]

    async def record(self, document: Document) -> bool:
        return await insert_once(self.refusals, document)

    async def exists(self, reward_id: str) -> bool:
        return await self.refusals.find_one({"_id": reward_id}, {"_id": 1}) is not None

    async def recent(self, limit: int, rule: str | None = None) -> list[Document]:
        query: dict[str, Any] = {"rule": rule} if rule else {}
        return [d async for d in self.refusals.find(query).sort("at", -1).limit(limit)]
