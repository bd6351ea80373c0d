"""Integration tests run against real services; each reads its URL from the environment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import REDIS_DEFAULT, require_service


@pytest.fixture
def redis_store() -> Iterator[tuple[str, dict[str, str]]]:
    """The shared Redis (CONVEYOR_REDIS_URL) with a key prefix of this test's own, deleted afterwards."""
    url = require_service("CONVEYOR_REDIS_URL", REDIS_DEFAULT)
    prefix = f"it{uuid.uuid4().hex[:12]}:"
    yield url, {"global_keyprefix": prefix}
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}*", count=5000):
        client.delete(key)
    client.close()
