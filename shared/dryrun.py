"""A read-only view of a service's database for ``pinwheel ops replay --dry-run``.

Reads go to the real store; writes are recorded, not made. An insert whose ``_id`` exists raises
the duplicate-key error the handler expects ("already done"), any other insert counts as an effect
that *would* be applied. Handlers run unchanged, so the report says what a real replay would change.
It is an estimate where a handler reads back what it inserted a moment earlier in the same event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from shared.mongo import DUPLICATE_KEY

_WRITES = {"insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one", "delete_many",
           "find_one_and_update", "find_one_and_replace", "find_one_and_delete", "bulk_write", "create_index",
           "create_indexes", "drop", "drop_index"}


class WriteLog:
    """What a dry run would have written, by collection and operation."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, collection: str, operation: str, n: int = 1) -> None:
        self.counts[(collection, operation)] += n

    def total(self, operation: str | None = None) -> int:
        return sum(n for (_, op), n in self.counts.items() if operation is None or op == operation)


class DryRunCollection:
    def __init__(self, real: Any, log: WriteLog) -> None:
        self._real = real
        self._log = log
        self.name: str = real.name

    def __getattr__(self, attribute: str) -> Any:
        if attribute in _WRITES:
            raise AttributeError(f"{attribute} is not supported in a dry run")
        return getattr(self._real, attribute)

    async def _exists(self, document: Mapping[str, Any]) -> bool:
        if "_id" not in document:
            return False
        return await self._real.find_one({"_id": document["_id"]}, {"_id": 1}) is not None

    async def insert_one(self, document: Mapping[str, Any], *args: Any, **kwargs: Any) -> InsertOneResult:
        if await self._exists(document):
            raise DuplicateKeyError("dry run: the document exists", DUPLICATE_KEY)
        self._log.record(self.name, "insert")
        return InsertOneResult(document.get("_id", ObjectId()), acknowledged=True)

    async def insert_many(self, documents: Sequence[Mapping[str, Any]], *args: Any, **kwargs: Any) -> InsertManyResult:
        errors = []
        ids = []
        for index, document in enumerate(documents):
            if await self._exists(document):
                errors.append({"index": index, "code": DUPLICATE_KEY, "errmsg": "dry run: the document exists"})
            else:
                self._log.record(self.name, "insert")
                ids.append(document.get("_id", ObjectId()))
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(ids)})
        return InsertManyResult(ids, acknowledged=True)

    async def _would_update(self, operation: str, filter_: Mapping[str, Any], many: bool = False) -> int:
        matched = await self._real.count_documents(filter_, limit=0 if many else 1)
        if matched:
            self._log.record(self.name, operation, matched)
        return int(matched)

    async def update_one(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> UpdateResult:
        matched = await self._would_update("update", filter_)
        return UpdateResult({"n": matched, "nModified": matched}, acknowledged=True)

    async def update_many(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> UpdateResult:
        matched = await self._would_update("update", filter_, many=True)
        return UpdateResult({"n": matched, "nModified": matched}, acknowledged=True)

    async def replace_one(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> UpdateResult:
        matched = await self._would_update("update", filter_)
        return UpdateResult({"n": matched, "nModified": matched}, acknowledged=True)

    async def delete_one(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> DeleteResult:
        matched = await self._would_update("delete", filter_)
        return DeleteResult({"n": matched}, acknowledged=True)

    async def delete_many(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> DeleteResult:
        matched = await self._would_update("delete", filter_, many=True)
        return DeleteResult({"n": matched}, acknowledged=True)

    async def find_one_and_update(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        await self._would_update("update", filter_)
        return await self._real.find_one(filter_)

    async def find_one_and_delete(self, filter_: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        await self._would_update("delete", filter_)
        return await self._real.find_one(filter_)

    async def create_indexes(self, *args: Any, **kwargs: Any) -> list[str]:
        return []

    async def create_index(self, *args: Any, **kwargs: Any) -> str:
        return ""


class DryRunDatabase:
    def __init__(self, real: Any, log: WriteLog | None = None) -> None:
        self._real = real
        self.log = log or WriteLog()
        self._collections: dict[str, DryRunCollection] = {}
        self.name: str = real.name

    def __getitem__(self, name: str) -> DryRunCollection:
        collection = self._collections.get(name)
        if collection is None:
            collection = self._collections[name] = DryRunCollection(self._real[name], self.log)
        return collection

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in {"command", "list_collection_names", "client"}:
            return getattr(self._real, name)
        return self[name]

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> DryRunCollection:
        return self[name]
