"""A record of every event a consumer has taken, keyed by the event's id.

Effects are made exactly once by their own unique keys; the inbox adds a cheap "seen before"
answer for handlers with nothing else to key on, and counts redeliveries for operators.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.events.envelope import CloudEvent, utcnow
from shared.mongo import Document, insert_once

INBOX = "inbox"


async def remember_event(db: AsyncDatabase[Document], event: CloudEvent[Any], **fields: Any) -> bool:
    """Store the event once; True the first time, False for a redelivery or replay."""
    document = {"_id": event.id, "type": event.type, "subject": event.subject, "time": event.time,
                "received_at": utcnow(), "redeliveries": 0, **fields}
    if await insert_once(db[INBOX], document):
        return True
    await db[INBOX].update_one({"_id": event.id}, {"$inc": {"redeliveries": 1}})
    return False
