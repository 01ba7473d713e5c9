"""``Idempotency-Key`` for creating POSTs, stored in MongoDB.

The same key with the same body returns the first response; with a different body, 409. Keys
are scoped to the caller and the route, and expire (default 24 h). Two concurrent first requests
with one key may both run the handler; handlers decide their effects by unique-key inserts, so the
effect still happens once, and the stored response is whichever insert won.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.errors import ApiError
from shared.events.envelope import utcnow
from shared.mongo import Document, Indexes, insert_once

COLLECTION = "idempotency_keys"
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 128

INDEXES = [Indexes(COLLECTION, [IndexModel([("expires_at", ASCENDING)])])]


def _fingerprint(body: Any) -> str:
    canonical = json.dumps(jsonable_encoder(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, db: AsyncDatabase[Document], ttl: timedelta = timedelta(hours=24)) -> None:
        self.collection = db[COLLECTION]
        self.ttl = ttl

    async def run(
        self,
        request: Request,
        caller: str,
        body: Any,
        produce: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> JSONResponse:
        """Run ``produce`` (returning status and a JSON-able body) once per idempotency key."""
        key = request.headers.get(HEADER)
        if key is None:
            status, content = await produce()
            return JSONResponse(jsonable_encoder(content), status_code=status)
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ApiError(400, "invalid_idempotency_key",
                           f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters")
        record_id = f"{caller}:{request.method}:{request.url.path}:{key}"
        fingerprint = _fingerprint(body)
        existing = await self.collection.find_one({"_id": record_id})
        if existing is not None and existing["expires_at"] <= utcnow():
            await self.collection.delete_one({"_id": record_id, "expires_at": existing["expires_at"]})
            existing = None
        if existing is None:
            status, content = await produce()
            content = jsonable_encoder(content)
            if status >= 300:
                return JSONResponse(content, status_code=status)
            now = utcnow()
            record = {"_id": record_id, "fingerprint": fingerprint, "status": status, "body": content,
                      "created_at": now, "expires_at": now + self.ttl}
            if await insert_once(self.collection, record):
                return JSONResponse(content, status_code=status)
            existing = await self.collection.find_one({"_id": record_id})
            if existing is None:  # expired and removed in between: ours stands
                return JSONResponse(content, status_code=status)
        if existing["fingerprint"] != fingerprint:
            raise ApiError(409, "idempotency_key_reused",
                           f"this {HEADER} was used with a different request body")
        return JSONResponse(existing["body"], status_code=existing["status"],
                            headers={"Idempotent-Replayed": "true"})
