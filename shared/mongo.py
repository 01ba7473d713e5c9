"""MongoDB wiring on PyMongo's async API (the successor of Motor).

FerretDB (our local MongoDB-protocol server) has no multi-document transactions and its updates
are read-then-write-back, so nothing here relies on either: races are decided by inserting a
document with a deterministic unique key, and the loser sees a duplicate-key error.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

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


class _InsertCoalescer:
    """Inserts into one collection made by concurrent tasks in the same event-loop turn go to the
    server as one unordered ``insert_many``: one round trip instead of one per document (a poll's
    records are handled concurrently, so their inserts arrive together). Each caller still gets
    its own answer: which of its documents were new, which were duplicates; any other per-document
    error is raised to the caller whose document it was. Two callers racing for one unique key
    in the same round trip behave as two racing inserts: the first wins, the second is told
    "duplicate"."""

    MAX_DOCUMENTS = 250

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection
        self.waiting: list[tuple[list[Document], asyncio.Future[list[BaseException | None]]]] = []
        self.scheduled = False

    async def insert(self, documents: list[Document]) -> list[BaseException | None]:
        """Per document: None (inserted), DuplicateKeyError, or another write error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[BaseException | None]] = loop.create_future()
        self.waiting.append((documents, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(lambda: loop.create_task(self._flush()))  # after this turn's callers
        return await future

    async def _flush(self) -> None:
        self.scheduled = False
        waiting, self.waiting = self.waiting, []
        chunks: list[list[tuple[list[Document], asyncio.Future[list[BaseException | None]]]]] = []
        while waiting:
            chunk: list[tuple[list[Document], asyncio.Future[list[BaseException | None]]]] = []
            size = 0
            while waiting and (not chunk or size + len(waiting[0][0]) <= self.MAX_DOCUMENTS):
                chunk.append(waiting.pop(0))
                size += len(chunk[-1][0])
            chunks.append(chunk)
        await asyncio.gather(*(self._send(chunk) for chunk in chunks))

    async def _send(self, chunk: list[tuple[list[Document], asyncio.Future[list[BaseException | None]]]]) -> None:
        documents = [d for docs, _ in chunk for d in docs]
        errors: dict[int, BaseException] = {}
        try:
            await self.collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                cls = DuplicateKeyError if error.get("code") == DUPLICATE_KEY else WriteError
                errors[error["index"]] = cls(error.get("errmsg", ""), error.get("code"), error)
        except BaseException as exc:  # the whole round trip failed: every caller sees it
            for _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for docs, future in chunk:
            if not future.done():
                future.set_result([errors.get(i) for i in range(start, start + len(docs))])
            start += len(docs)


_COALESCERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, str, str], _InsertCoalescer]] = (
    weakref.WeakKeyDictionary())


async def _insert_coalesced(collection: Any, documents: list[Document]) -> list[BaseException | None]:
    if not isinstance(collection, AsyncCollection):  # e.g. the dry-run view: no batching
        results: list[BaseException | None] = []
        for document in documents:
            try:
                await collection.insert_one(document)
                results.append(None)
            except (DuplicateKeyError, WriteError) as exc:
                results.append(exc)
        return results
    per_loop = _COALESCERS.setdefault(asyncio.get_running_loop(), {})
    key = (id(collection.database.client), collection.database.name, collection.name)
    coalescer = per_loop.get(key)
    if coalescer is None or coalescer.collection.database.client is not collection.database.client:
        coalescer = per_loop[key] = _InsertCoalescer(collection)
    return await coalescer.insert(documents)


async def insert_once(collection: AsyncCollection[Document], document: Mapping[str, Any]) -> bool:
    """Insert; False if a document with the same unique key exists (the race was lost, or the
    effect happened already). This is how every decision is made exactly once. Concurrent
    inserts into one collection share a round trip (see ``_InsertCoalescer``)."""
    (error,) = await _insert_coalesced(collection, [dict(document)])
    if error is None:
        _count(inserted=1)
        return True
    if isinstance(error, DuplicateKeyError):
        _count(duplicates=1)
        return False
    raise error


async def insert_many_once(collection: AsyncCollection[Document], documents: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert a batch (sharing the round trip with concurrent inserts into the collection);
    returns the indexes of the documents that were new. Duplicates are skipped, any other write
    error is raised."""
    if not documents:
        return []
    errors = await _insert_coalesced(collection, [dict(d) for d in documents])
    other = [e for e in errors if e is not None and not isinstance(e, DuplicateKeyError)]
    if other:
        raise other[0]
    new = [i for i, error in enumerate(errors) if error is None]
    _count(inserted=len(new), duplicates=len(documents) - len(new))
    return new


async def ping(client: AsyncMongoClient[Document], timeout: float = 1.0) -> bool:
    try:
        await client.admin.command("ping", maxTimeMS=int(timeout * 1000))
    except Exception:
        return False
    return True
