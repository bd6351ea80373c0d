"""The public API: one file, an exact member list, Celery's module paths."""

from __future__ import annotations

import importlib

import conveyor


def test_exported_members_are_exactly() -> None:
    assert sorted(conveyor.__all__) == [
        "AsyncResult", "BrokerConnectionError", "Celery", "Conveyor", "ConveyorError", "Exchange", "GroupResult",
        "ImproperlyConfigured", "MaxRetriesExceededError", "NotRegistered", "Queue", "Retry", "Signature",
        "SoftTimeLimitExceeded", "Task", "TaskRevokedError", "TimeLimitExceeded", "WorkerLostError",
        "__version__", "chain", "chord", "current_app", "current_task", "exceptions", "group", "shared_task",
        "signature", "states",
    ]  # fmt: skip
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name


def test_celery_alias_is_the_app_class() -> None:
    assert conveyor.Celery is conveyor.Conveyor


def test_module_paths_mirror_celery() -> None:
    """Migrating an import is a change of prefix: celery.x -> conveyor.x."""
    for module, names in {
        "conveyor.result": ["AsyncResult", "GroupResult"],
        "conveyor.exceptions": ["TimeoutError", "MaxRetriesExceededError", "SoftTimeLimitExceeded", "Retry"],
        "conveyor.states": ["PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "READY_STATES"],
        "conveyor.canvas": ["signature", "Signature", "chain", "group", "chord"],
    }.items():
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"{module}.{name}"


def test_timeout_error_is_also_the_builtin() -> None:
    assert issubclass(conveyor.exceptions.TimeoutError, TimeoutError)


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("conveyor").joinpath("py.typed").is_file()


def test_current_app_is_celerys_proxy_and_callable() -> None:
    from conveyor import Celery, current_app

    app = Celery("proxied", broker="memory://proxied")
    try:
        assert current_app() is app
        assert current_app.main == "proxied" and current_app.conf is app.conf
        assert current_app.tasks is app.tasks and "proxied" in repr(current_app)
        newer = Celery("newer", broker="memory://newer")
        assert current_app.main == "newer"
        newer.close()
    finally:
        app.close()
