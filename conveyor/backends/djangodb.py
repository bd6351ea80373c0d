"""The Django result backend: results in a Django project's database, through its ORM (S1.4).

`result_backend = "django-db"` (Celery's name) uses the `default` database;
`django://<alias>` another one. The project lists `"conveyor.contrib.django"`
in `INSTALLED_APPS` and runs `manage.py migrate`; Django must be set up before
the first result is read or written, as in any Django worker
(`DJANGO_SETTINGS_MODULE` and `django.setup()` in the module given to `-A`).

Each batch is one transaction. A SUCCESS is never overwritten: the update
skips rows already in SUCCESS, and a row that does not exist yet is created.
Waiting callers poll every `polling_interval` seconds (default 0.5).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from conveyor.backends.base import ResultBackend, StateUpdate, StoredTask, Waiter, coalesce
from conveyor.exceptions import BackendConnectionError, BackendError, ImproperlyConfigured
from conveyor.threadend import when_thread_ends


class DjangoBackend(ResultBackend):
    wakes_waiters = False

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(url, options, **kwargs)
        self.alias = (urlsplit(url).netloc if url.startswith("django://") else "") or "default"

    def _models(self) -> tuple[Any, Any]:
        from django.apps import apps

        if not apps.ready:
            raise ImproperlyConfigured(
                f"result_backend {self.url!r}: Django is not set up (set DJANGO_SETTINGS_MODULE and call "
                "django.setup() before the worker or producer uses results)"
            )
        if not apps.is_installed("conveyor.contrib.django"):
            raise ImproperlyConfigured(
                f"result_backend {self.url!r}: add 'conveyor.contrib.django' to INSTALLED_APPS and run migrate"
            )
        from django.conf import settings

        if self.alias not in settings.DATABASES:
            raise ImproperlyConfigured(
                f"result_backend {self.url!r}: database alias {self.alias!r} is not in settings.DATABASES"
            )
        from conveyor.contrib.django.models import TaskHistory, TaskResult

        return TaskResult.objects.using(self.alias), TaskHistory.objects.using(self.alias)

    def _translate(self, where: str) -> _Translate:
        return _Translate(self.alias, f"Django backend {where}")

    def write(self, updates: Sequence[StateUpdate]) -> None:
        if not updates:
            return
        from django.db import IntegrityError, transaction

        results, history = self._models()
        with self._translate("write"), transaction.atomic(using=self.alias):
            for u in coalesce(updates):
                fields = {"state": u.state, "meta": u.meta, "expires_at": u.expires_at}
                if results.filter(task_id=u.task_id).exclude(state="SUCCESS").update(**fields):
                    continue
                if results.filter(task_id=u.task_id).exists():
                    continue  # a SUCCESS: kept
                try:
                    with transaction.atomic(using=self.alias):  # a savepoint: a concurrent create may win
                        results.create(task_id=u.task_id, **fields)
                except IntegrityError:
                    results.filter(task_id=u.task_id).exclude(state="SUCCESS").update(**fields)
            history.bulk_create(
                [
                    history.model(task_id=u.task_id, digest=hashlib.sha1(entry).hexdigest(), entry=entry)
                    for u in updates
                    for entry in u.history
                ],
                ignore_conflicts=True,
            )

    def read(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        from django.db.models import Q

        results, _ = self._models()
        live = Q(expires_at__isnull=True) | Q(expires_at__gt=time.time())
        with self._translate("read"):
            rows = results.filter(live, task_id__in=list(task_ids)).values_list("task_id", "meta")
            return {task_id: bytes(meta) for task_id, meta in rows}

    def read_history(self, task_id: str) -> list[bytes]:
        _, history = self._models()
        with self._translate("read_history"):
            return [
                bytes(entry) for entry in history.filter(task_id=task_id).order_by("id").values_list("entry", flat=True)
            ]

    def recent(self, limit: int) -> list[StoredTask]:
        from django.db.models import OuterRef, Q, Subquery

        results, history = self._models()
        last_entry = history.filter(task_id=OuterRef("task_id")).order_by("-id").values("entry")[:1]
        # A task's expiry is when it was last written plus result_expires: the latest first.
        rows = (
            results.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=time.time()))
            .annotate(last_entry=Subquery(last_entry)).order_by("-expires_at")
            .values_list("task_id", "meta", "last_entry")[:limit]
        )  # fmt: skip
        with self._translate("recent"):
            return [StoredTask(t, bytes(meta), None if e is None else bytes(e)) for t, meta, e in rows]

    def delete(self, task_ids: Sequence[str]) -> None:
        from django.db import transaction

        results, history = self._models()
        with self._translate("delete"), transaction.atomic(using=self.alias):
            results.filter(task_id__in=list(task_ids)).delete()
            history.filter(task_id__in=list(task_ids)).delete()

    def cleanup(self) -> int:
        from django.db import transaction

        results, history = self._models()
        with self._translate("cleanup"), transaction.atomic(using=self.alias):
            expired = list(results.filter(expires_at__lte=time.time()).values_list("task_id", flat=True))
            for start in range(0, len(expired), 1000):
                chunk = expired[start : start + 1000]
                history.filter(task_id__in=chunk).delete()
                results.filter(task_id__in=chunk).delete()
        return len(expired)

    def waiter(self, task_id: str) -> Waiter:
        return Waiter(float(self.options.get("polling_interval", 0.5)))


_closing = threading.local()


def _close_when_thread_ends(wrapper: Any) -> None:
    """Close this thread's connection when the thread ends (Django closes connections at the end of
    a request; a worker's threads have none)."""
    wrappers = _closing.__dict__.setdefault("wrappers", set())
    if wrapper not in wrappers:
        wrappers.add(wrapper)
        when_thread_ends(_close_dbapi, wrapper)


def _close_dbapi(wrapper: Any) -> None:
    # The driver's connection, not Django's wrapper: the wrapper refuses other threads.
    if wrapper.connection is not None:
        wrapper.connection.close()


class _Translate:
    """Django's database errors as Conveyor's; a connection broken meanwhile is dropped first."""

    def __init__(self, alias: str, where: str) -> None:
        self.alias, self.where = alias, where

    def __enter__(self) -> None:
        from django.db import connections

        wrapper = connections[self.alias]
        # A worker thread lives longer than a request: reconnect if the database went away.
        wrapper.close_if_unusable_or_obsolete()
        _close_when_thread_ends(wrapper)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        from django.db import DatabaseError, InterfaceError, OperationalError

        if isinstance(exc, (OperationalError, InterfaceError)):
            raise BackendConnectionError(f"{self.where}: {exc}") from exc
        if isinstance(exc, DatabaseError):
            raise BackendError(f"{self.where}: {exc}") from exc
