"""MongoDB wiring on PyMongo's async API (the successor of Motor).

FerretDB (our local MongoDB-protocol server) has no multi-document transactions and its updates
are read-then-write-back, so nothing here relies on either: races are decided by inserting a
document with a deterministic unique key, and the loser sees a duplicate-key error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from shared.settings import ServiceSettings

Document = dict[str, Any]
DUPLICATE_KEY = 11000


def make_client(settings: ServiceSettings, **kwargs: Any) -> AsyncMongoClient[Document]:
    options: dict[str, Any] = {
        "tz_aware": True,
        "tzinfo": UTC,
        "serverSelectionTimeoutMS": 3000,
        "connectTimeoutMS": 3000,
        "appname": f"pinwheel-{settings.service_name}",
        **kwargs,
    }
    return AsyncMongoClient(settings.mongodb_uri.get_secret_value(), **options)


@dataclass(frozen=True)
class Indexes:
    """The indexes a collection needs, created at startup (idempotent)."""

    collection: str
    models: Sequence[IndexModel] = field(default_factory=tuple)


async def ensure_indexes(db: AsyncDatabase[Document], indexes: Iterable[Indexes]) -> None:
    # One index per createIndexes call: FerretDB 1.24 drops the connection when a single call
    # re-creates several indexes that exist already (every restart, every second replica).
    for spec in indexes:
        for model in spec.models:
            await db[spec.collection].create_indexes([model])


def is_duplicate_key(exc: BaseException) -> bool:
    """A unique-key violation. FerretDB reports one caused by an update (not an insert) as
    InternalError carrying PostgreSQL's SQLSTATE 23505, so that is recognised too."""
    if isinstance(exc, DuplicateKeyError) or getattr(exc, "code", None) == DUPLICATE_KEY:
        return True
    return isinstance(exc, OperationFailure) and "SQLSTATE 23505" in str(exc)


@dataclass
class EffectTally:
    """What the inserts inside a ``tally_effects()`` block did: new documents vs duplicates.
    Operators' replay reports "effects applied" and "duplicates skipped" from it."""

    inserted: int = 0
    duplicates: int = 0


_TALLY: ContextVar[EffectTally | None] = ContextVar("pinwheel_effect_tally", default=None)


@contextlib.contextmanager
def tally_effects() -> Iterator[EffectTally]:
    tally = EffectTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def _count(inserted: int = 0, duplicates: int = 0) -> None:
    tally = _TALLY.get()
    if tally is not None:
        tally.inserted += inserted
        tally.duplicates += duplicates


async def insert_once(collection: AsyncCollection[Document], document: Mapping[str, Any]) -> bool:
    """Insert; False if a document with the same unique key exists (the race was lost, or the
    effect happened already). This is how every decision is made exactly once."""
    try:
        await collection.insert_one(dict(document))
    except DuplicateKeyError:
        _count(duplicates=1)
        return False
    _count(inserted=1)
    return True


async def insert_many_once(collection: AsyncCollection[Document], documents: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert a batch in one round trip; returns the indexes of the documents that were new.
    Duplicates are skipped, any other write error is raised."""
    if not documents:
        return []
    try:
        await collection.insert_many([dict(d) for d in documents], ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        other = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        if other:
            raise
        duplicate = {e["index"] for e in errors}
        _count(inserted=len(documents) - len(duplicate), duplicates=len(duplicate))
        return [i for i in range(len(documents)) if i not in duplicate]
    _count(inserted=len(documents))
    return list(range(len(documents)))


async def ping(client: AsyncMongoClient[Document], timeout: float = 1.0) -> bool:
    try:
        await client.admin.command("ping", maxTimeMS=int(timeout * 1000))
    except Exception:
        return False
    return True
