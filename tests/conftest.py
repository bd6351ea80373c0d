"""Shared fixtures: apps on each embedded store, and the rule for service-backed tests.

Tests that need a server (Redis, RabbitMQ, PostgreSQL) read its URL from an
environment variable, skip with the reason when it is unreachable, and fail
instead when CONVEYOR_REQUIRE_SERVICES=1 (as CI sets).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from conveyor import Celery
from tests.processes import E2E


def require_service(env_var: str, default_url: str) -> str:
    """The service URL, after checking it answers on loopback; skip or fail if not."""
    url = os.environ.get(env_var, default_url)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=1):
            pass
    except OSError as exc:
        reason = f"{env_var}={url} is unreachable: {exc}"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return url


REDIS_DEFAULT = "redis://127.0.0.1:6379/15"
AMQP_DEFAULT = "amqp://guest:guest@127.0.0.1:5672//"
#: SQL result backends: kind -> (environment variable, default URL).
SQL_DEFAULTS = {
    "postgresql": ("CONVEYOR_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": ("CONVEYOR_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}


def store_url(kind: str, tmp_path: os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """A fresh store of this kind: its URL and the transport options that isolate it.

    Redis stores share one server: each gets its own key prefix, so parallel
    tests never see each other's keys.
    """
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}", {}
    if kind == "redis":
        return require_service("CONVEYOR_REDIS_URL", REDIS_DEFAULT), {"global_keyprefix": f"t{uuid.uuid4().hex[:12]}:"}
    if kind == "amqp":
        # Its own queue names, dropped by RabbitMQ a while after the test stops using them; shared
        # state (and, in contract_app, results) in a SQLite file that worker processes can open too.
        return require_service("CONVEYOR_AMQP_URL", AMQP_DEFAULT), {
            "global_keyprefix": f"t{uuid.uuid4().hex[:12]}.",
            "queue_expires": "300",
            "state_url": f"sqlite:///{os.path.join(tmp_path, 'state.db')}",
        }
    if kind in ("django", "django-pg"):
        alias = django_database("pg" if kind == "django-pg" else "default")
        return f"django://{alias}", {}
    if kind == "sql-sqlite":
        return f"db+sqlite:///{os.path.join(tmp_path, 'results.db')}", {}
    if kind in SQL_DEFAULTS:
        env_var, default = SQL_DEFAULTS[kind]
        # Each test gets its own tables in the shared database (dropped by the fixture that made them).
        return f"db+{require_service(env_var, default)}", {"table_prefix": f"t{uuid.uuid4().hex[:12]}_"}
    return f"sqlite:///{os.path.join(tmp_path, 'conveyor.db')}", {}


STORES = ["memory", "sqlite"]
#: Every broker the contract suite holds to the same behaviour.
BROKERS = ["memory", "sqlite", "redis", "amqp"]
#: Every state store (RabbitMQ keeps its shared state in one of these).
STATE_STORES = ["memory", "sqlite", "redis"]
#: Every result backend: the brokers' stores, and SQL databases through SQLAlchemy.
BACKENDS = ["memory", "sqlite", "redis", "postgresql", "mysql", "sql-sqlite", "django", "django-pg"]


def contract_app(main: str, store: tuple[str, dict[str, str]]) -> Celery:
    """An app on one store (broker and backend), with the short polling and lease times tests want."""
    url, options = store
    # RabbitMQ keeps no results: its apps keep them where its shared state is.
    app = Celery(main, broker=url, result_backend=options.get("state_url", url))
    app.conf.broker_transport_options = {"polling_interval": 0.2, "lease_timeout": 3, **options}
    app.conf.result_backend_transport_options = {"polling_interval": 0.2, **options}
    return app


def django_database(alias: str) -> str:
    """A migrated, emptied database of this process's Django set-up: `default` is SQLite,
    `pg` PostgreSQL in a schema of this process's own (xdist runs several at once)."""
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    if not settings.configured:
        pg = urlsplit(require_service("CONVEYOR_POSTGRES_URL", SQL_DEFAULTS["postgresql"][1]))
        schema = f"conveyor_test_{os.getpid()}"
        settings.configure(
            INSTALLED_APPS=["conveyor.contrib.django"],
            USE_TZ=True,
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"/tmp/conveyor-django-{os.getpid()}.db"},
                "pg": {
                    "ENGINE": "django.db.backends.postgresql", "NAME": pg.path.strip("/") or "postgres",
                    "USER": pg.username or "postgres", "PASSWORD": pg.password or "",
                    "HOST": pg.hostname or "127.0.0.1", "PORT": pg.port or 5432,
                    "OPTIONS": {"options": f"-c search_path={schema}"},
                },
            },
        )  # fmt: skip
        django.setup()
        with connections["pg"].cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        for database in ("default", "pg"):
            call_command("migrate", database=database, verbosity=0)
    from conveyor.contrib.django.models import TaskHistory, TaskResult

    TaskResult.objects.using(alias).all().delete()
    TaskHistory.objects.using(alias).all().delete()
    return alias


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    """A directory for an app module and the worker processes a test starts (stopped at the end)."""
    env = E2E(tmp_path)
    yield env
    env.stop_all()


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
