"""Session fixtures: one real Kafka and one real MongoDB-protocol server for the whole run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.infra import Infra, session_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with session_infra() as running_infra:
        yield running_infra


@pytest.fixture
def namespace() -> str:
    """A fresh topic prefix / database / consumer-group namespace for one test."""
    return f"t{uuid.uuid4().hex[:10]}"
