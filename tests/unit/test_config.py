"""App and configuration (S4)."""

from __future__ import annotations

import importlib.util
import sys
import types
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor import Celery
from conveyor.config import Settings, parse_rate
from conveyor.exceptions import ImproperlyConfigured

EXAMPLES = Path(__file__).parents[2] / "examples" / "tutorial"


def _tutorial_config() -> type:
    spec = importlib.util.spec_from_file_location("tutorial_config", EXAMPLES / "config.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BaseCeleryConfig  # type: ignore[no-any-return]


class TutorialConfig(_tutorial_config()):  # type: ignore[misc]
    """The tutorial's configuration class, with its Redis URLs (on loopback) put back."""

    broker_url = "redis://:123456@127.0.0.1:6379/0"
    result_backend = "redis://:123456@127.0.0.1:6379/1"


def test_tutorial_configuration_is_accepted_and_routes_tasks() -> None:
    """S4: the whole tutorial class loads; task_queues + task_routes send each task to its queue."""
    app = Celery("task")
    app.config_from_object(TutorialConfig)
    conf = app.conf
    assert conf.worker_concurrency == 4 and conf.task_time_limit == 1800.0 and conf.result_expires == 86400.0
    assert conf.accept_content == ("json",) and conf.timezone == "Asia/Shanghai"
    assert app.default_queues() == ["priority_low", "priority_high", "default"]
    assert app.router.route("task.add") == "default"
    assert app.router.route("task.priority_high") == "priority_high"
    assert app.router.route("task.priority_low") == "priority_low"
    assert app.router.route("task.other") == "celery"


def test_defaults_are_celerys() -> None:
    conf = Settings()
    assert conf.task_serializer == "json" and conf.accept_content == ("json",)
    assert conf.worker_prefetch_multiplier == 4 and conf.task_default_queue == "celery"
    assert conf.result_expires == 86400.0 and conf.enable_utc is True
    assert conf.task_acks_late is False and conf.task_publish_retry is True
    assert conf.task_track_started is True  # Conveyor's one deliberate change


def test_unknown_setting_names_it_and_suggests() -> None:
    app = Celery("x")
    with pytest.raises(ImproperlyConfigured, match="unknown setting 'task_serialiser'; did you mean 'task_serializer'"):
        app.conf.update(task_serialiser="json")
    with pytest.raises(ImproperlyConfigured, match="worker_concurency.*worker_concurrency"):
        app.conf.worker_concurency = 3


def test_unknown_setting_in_a_config_class_is_caught() -> None:
    class Config:
        broker_url = "memory://"
        reslt_backend = "memory://"

    with pytest.raises(ImproperlyConfigured, match="reslt_backend.*result_backend"):
        Celery("x").config_from_object(Config)


@pytest.mark.parametrize(
    ("name", "value", "expects"),
    [
        ("worker_concurrency", 0, "an integer >= 1"),
        ("worker_concurrency", "4", "an integer >= 1"),
        ("task_acks_late", "yes", "True or False"),
        ("task_serializer", "xml", "a serializer name"),
        ("accept_content", ["json", "bson"], "a serializer name"),
        ("timezone", "Mars/Olympus", "IANA time zone"),
        ("task_time_limit", -1, "seconds"),
        ("task_queues", ["celery"], "Queue"),
        ("task_annotations", {"tasks.add": {"rate_limit": "ten per second"}}, "a rate"),
        ("worker_pool", "greenlet", "one of prefork"),
        ("task_publish_retry_policy", {"max_retry": 1}, "unknown"),
    ],
)
def test_bad_value_names_the_setting_and_what_it_expects(name: str, value: object, expects: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"setting '{name}' expects .*{expects}"):
        Celery("x").conf.update({name: value})


def test_update_is_all_or_nothing() -> None:
    app = Celery("x")
    with pytest.raises(ImproperlyConfigured):
        app.conf.update(worker_concurrency=3, task_acks_late="no")
    assert app.conf.worker_concurrency is None


def test_conf_attribute_item_access_and_timedelta() -> None:
    app = Celery("x", broker="memory://", backend="memory://")
    assert app.conf["broker_url"] == "memory://" and app.conf.result_backend == "memory://"
    app.conf["result_expires"] = timedelta(hours=2)
    assert app.conf.result_expires == 7200.0
    assert "task_routes" in app.conf and "nope" not in app.conf
    with pytest.raises(KeyError, match="unknown setting"):
        app.conf["nope"]


def test_config_from_object_accepts_instance_and_module_name() -> None:
    class Config:
        worker_concurrency = 7

    app = Celery("x")
    app.config_from_object(Config())
    assert app.conf.worker_concurrency == 7

    module = types.ModuleType("conveyor_test_settings")
    module.task_default_queue = "jobs"  # type: ignore[attr-defined]
    module.timedelta = timedelta  # type: ignore[attr-defined]  # imported names are not settings
    module.SOME_CONSTANT = 3  # type: ignore[attr-defined]
    sys.modules["conveyor_test_settings"] = module
    try:
        app.config_from_object("conveyor_test_settings")
    finally:
        del sys.modules["conveyor_test_settings"]
    assert app.conf.task_default_queue == "jobs"


def test_config_from_object_with_django_namespace() -> None:
    class DjangoSettings:
        CELERY_TASK_ACKS_LATE = True
        DEBUG = True

    app = Celery("x")
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert app.conf.task_acks_late is True


def test_missing_config_module_is_a_clear_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="cannot import configuration module 'no_such_settings'"):
        Celery("x").config_from_object("no_such_settings")


def test_constructor_arguments() -> None:
    app = Celery("task", broker="memory://b", backend="memory://r", include=["a.b"])
    assert app.main == "task" and app.conf.broker_url == "memory://b" and app.conf.include == ("a.b",)


@pytest.mark.parametrize(("text", "per_second"), [(10, 10.0), ("10/s", 10.0), ("60/m", 1.0), ("3600/h", 1.0)])
def test_rate_strings(text: object, per_second: float) -> None:
    assert parse_rate(text) == per_second


def test_urls_in_logs_and_screens_hide_their_password() -> None:
    """Security: URLs carry passwords; what Conveyor prints does not."""
    from conveyor.urls import redacted

    assert redacted("amqp://user:s3cret@rabbit:5672//") == "amqp://user:***@rabbit:5672//"
    assert redacted("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("sqlite:///conveyor.db") == "sqlite:///conveyor.db"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"lease_timeout": -5}, "'lease_timeout' from 0.1 to 604800 seconds, not -5"),
        ({"polling_interval": "often"}, "'polling_interval' from"),
        ({"max_priority": 300}, "'max_priority' from 0 to 255 priority levels"),
        ({"socket_timeout": True}, "'socket_timeout' from"),
    ],
)
def test_numeric_transport_options_out_of_range_are_errors(options: dict[str, object], expected: str) -> None:
    app = Celery("t", broker="memory://")
    for setting in ("broker_transport_options", "result_backend_transport_options"):
        with pytest.raises(ImproperlyConfigured) as raised:
            app.conf.update({setting: options})
        assert expected in str(raised.value) and setting in str(raised.value)
    app.conf.broker_transport_options = {"lease_timeout": 5, "polling_interval": "0.5"}


def test_every_celery_setting_name_is_implemented_or_accepted_without_effect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from conveyor.celery_settings import NAMES, reason_without_effect
    from conveyor.config import _FIELDS

    app = Celery("t", broker="memory://")
    for name in sorted(NAMES):
        reason = reason_without_effect(name)
        assert (name in _FIELDS) or (reason and reason != "not implemented in Conveyor"), name
        if name not in _FIELDS:
            with caplog.at_level("INFO", logger="conveyor.config"):
                app.conf.update({name: "as set"})
            assert app.conf[name] == getattr(app.conf, name) == "as set"
    assert "Setting broker_connection_retry_on_startup has no effect in Conveyor" in caplog.text


def test_celery_old_upper_case_names_set_the_new_settings() -> None:
    app = Celery("t", broker="memory://")
    app.conf.update(CELERY_TASK_SERIALIZER="msgpack", CELERYD_CONCURRENCY=3, BROKER_URL="memory://old")
    assert app.conf.task_serializer == "msgpack" and app.conf.worker_concurrency == 3
    assert app.conf.broker_url == "memory://old" and app.conf.CELERY_TASK_SERIALIZER == "msgpack"

    class OldStyle:
        CELERY_RESULT_BACKEND = "memory://results"
        CELERY_ACKS_LATE = True

    app.config_from_object(OldStyle)
    assert app.conf.result_backend == "memory://results" and app.conf.task_acks_late is True


def test_a_misspelt_celery_name_is_still_an_error_with_a_suggestion() -> None:
    app = Celery("t", broker="memory://")
    with pytest.raises(ImproperlyConfigured, match="did you mean 'broker_connection_retry_on_startup'"):
        app.conf.broker_connection_retry_on_start = True


def test_the_migration_guide_lists_every_celery_setting_without_effect_with_its_reason() -> None:
    from conveyor.celery_settings import NAMES, reason_without_effect
    from conveyor.config import _FIELDS

    page = (Path(__file__).parents[2] / "docs" / "celery-compatibility.md").read_text()
    for name in NAMES - set(_FIELDS):
        assert f"| `{name}` | {reason_without_effect(name)} |" in page, name
