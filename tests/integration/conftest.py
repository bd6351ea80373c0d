"""Integration tests against real services; fixtures (redis_store, e2e) live in tests/conftest.py."""
