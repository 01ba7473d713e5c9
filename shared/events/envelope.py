"""The CloudEvents 1.0 envelope (structured JSON mode), typed by its ``data``."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

# Traces are W3C trace context: version-traceid-parentid-flags.
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is not UTC:  # most values are UTC already: skip the conversion (hot path)
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc), PlainSerializer(_rfc3339, return_type=str)]
"""An aware datetime, normalised to UTC, written as RFC 3339 with ``Z``; naive input is refused."""

# NUL is the one character no store keeps in a string (PostgreSQL under FerretDB refuses it): refused at
# the boundary (422 / DLQ `invalid_event`) instead of failing in the store.
NO_NUL = r"^[^\x00]*$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=False, pattern=NO_NUL)]
"""An opaque identifier chosen by its owner system."""

# Strict: money is never a float or a numeric string.
Money = Annotated[int, Field(strict=True, ge=0, le=10**12, description="integer minor units (fen); 2000 is 20.00 CNY")]
SignedMoney = Annotated[int, Field(strict=True, ge=-(10**12), le=10**12, description="integer minor units (fen)")]
Currency = Literal["CNY"]

DataT = TypeVar("DataT", bound=BaseModel)


class EventData(BaseModel):
    """Base of every event's ``data``: unknown fields are kept (other systems may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class CloudEvent(BaseModel, Generic[DataT]):
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: Id
    source: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    time: UtcDatetime
    subject: Annotated[str, StringConstraints(max_length=256)] | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: Annotated[str, StringConstraints(pattern=TRACEPARENT_PATTERN)] | None = None
    data: DataT

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class RawCloudEvent(CloudEvent[Any]):
    """The envelope checked, ``data`` left for the typed model of its ``type``."""

    data: dict[str, Any]


def new_event_id(*deterministic_parts: str) -> str:
    """A fresh id, or a stable one derived from the decision that caused the event, so that the
    same decision re-made after a crash produces the same id and consumers can dedupe."""
    if deterministic_parts:
        return str(uuid.UUID(uuid5_hex("pinwheel:" + "|".join(deterministic_parts))))
    return str(uuid.uuid4())


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def uuid5_hex(name: str) -> str:
    """``uuid.uuid5(uuid.NAMESPACE_URL, name).hex``, without building UUID objects (it runs for
    every event handled: trace ids, event ids)."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


def utcnow() -> datetime:
    return datetime.now(UTC)
