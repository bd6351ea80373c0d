"""Integration tests against real services; fixtures (redis_store, e2e) live in tests/conftest.py."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own: it may kill its connections, restart it, starve it, or
    count the commands it ran."""
    own = RedisServer(tmp_path / "redis")
    own.start()
    yield own
    own.stop()
