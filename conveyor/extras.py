"""Optional parts of Conveyor, installed as extras: a missing one is a one-line error naming its install."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.exceptions import ImproperlyConfigured

#: The top-level modules each extra installs.
EXTRAS: dict[str, tuple[str, ...]] = {
    "redis": ("redis", "hiredis"),
    "amqp": ("aiormq", "pamqp"),
    "dashboard": ("starlette", "uvicorn", "prometheus_client"),
    "sql": ("sqlalchemy", "psycopg", "pymysql"),
    "django": ("django",),
    "security": ("cryptography",),
}


@contextmanager
def requires(extra: str, what: str) -> Iterator[None]:
    """Turn a missing module of `extra` into ImproperlyConfigured saying what needs it and how to install it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package not in EXTRAS[extra]:
            raise
        raise ImproperlyConfigured(f"{what} needs {package}: pip install 'conveyor[{extra}]'") from None
