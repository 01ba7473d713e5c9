"""Fixtures of the security suite: the three services running against the real Kafka and store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.security import Trio, running_trio


@pytest.fixture(scope="module")
async def trio(infra: Any) -> AsyncIterator[Trio]:
    """One running copy of the three services for a whole test module (default limits)."""
    async with running_trio(infra, f"s{uuid.uuid4().hex[:10]}") as services:
        yield services
