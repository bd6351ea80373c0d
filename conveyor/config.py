"""Every setting Conveyor understands, with its default and its check, in one place.

`Settings` is the object behind `app.conf`: attribute and item access,
`update()`, and a check on every assignment. An unknown name is an error that
suggests the nearest valid one; a bad value is an error naming the setting and
what it expects. Defaults are Celery's except where the comment says why.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import timedelta
from typing import Any

from conveyor.celery_settings import NAMES as CELERY_NAMES
from conveyor.celery_settings import OLD_NAMES, reason_without_effect
from conveyor.exceptions import ImproperlyConfigured
from conveyor.routing import Queue

logger = logging.getLogger("conveyor.config")
#: Celery settings without effect already logged in this process (each is said once).
_NOTED: set[str] = set()

Check = Callable[[Any], Any]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(value: Any) -> float | None:
    """`10`, `"10/s"`, `"10/m"`, `"10/h"` -> tasks per second (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise ValueError(f"a rate such as 10, '10/s', '10/m' or '10/h', not {value!r}")
        per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
        rate = float(match.group(1)) / per
    return rate or None


# Checks: each returns the normalised value or raises ValueError("<what it expects>").
def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("True or False")
    return value


def _optional(check: Check) -> Check:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ValueError("a URL such as redis://127.0.0.1:6379/0 or sqlite:///conveyor.db")
    return value


def _int(minimum: int) -> Check:
    def integer(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return integer


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("a number of seconds >= 0 or a timedelta")
    return float(value)


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return tuple(value)


def _registered(kind: str, what: str) -> Callable[[Any], str]:
    """A validator of a name `conveyor.serialization.<kind>` knows (a serializer, a codec)."""

    def check(value: Any) -> str:
        from conveyor import serialization

        try:
            getattr(serialization, kind)(_str(value))
        except ImproperlyConfigured as exc:
            raise ValueError(f"{what} ({exc})") from None
        return value  # type: ignore[no-any-return]

    return check


_serializer = _registered("serializer", "a serializer name")
_compression = _registered("codec", "a compression name")


def _accept(value: Any) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        _serializer(name)
    return names


def _class_or_path(value: Any) -> Any:
    if not isinstance(value, (str, type)):
        raise ValueError("a class or a 'module:Class' string")
    return value


def _choice(*choices: str) -> Check:
    def choice(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(map(repr, choices))}")
        return value  # type: ignore[no-any-return]

    return choice


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("a dict")
    return dict(value)


#: Numeric transport options (of the brokers and result backends), with the range each must fall in.
TRANSPORT_NUMBERS: dict[str, tuple[float, float, str]] = {
    "lease_timeout": (0.1, 86_400 * 7, "seconds"),
    "polling_interval": (0.001, 3600, "seconds"),
    "socket_timeout": (0.01, 3600, "seconds"),
    "socket_connect_timeout": (0.01, 3600, "seconds"),
    "connect_timeout": (0.01, 3600, "seconds"),
    "operation_timeout": (0.01, 3600, "seconds"),
    "health_check_interval": (0, 3600, "seconds"),
    "queue_expires": (0, 86_400 * 365, "seconds"),
    "reply_queue_expires": (1, 86_400 * 365, "seconds"),
    "max_priority": (0, 255, "priority levels"),
}


def _transport_options(value: Any) -> dict[str, Any]:
    options = _dict(value)
    for name, (low, high, unit) in TRANSPORT_NUMBERS.items():
        number = options.get(name)
        if number is None:
            continue
        try:
            parsed = float(number) if not isinstance(number, bool) else None
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or not low <= parsed <= high:
            raise ValueError(f"{name!r} from {low:g} to {high:g} {unit}, not {number!r}")
    return options


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(_str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"an IANA time zone name such as 'Asia/Shanghai', not {value!r}") from None
    return value  # type: ignore[no-any-return]


def _queues(value: Any) -> tuple[Queue, ...]:
    if isinstance(value, Queue):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, (str, Mapping)):
        raise ValueError("a list of Queue(name, Exchange(name), routing_key=...)")
    items = tuple(value)
    if not all(isinstance(q, Queue) for q in items):
        raise ValueError("a list of Queue(name, Exchange(name), routing_key=...)")
    return items


def _routes(value: Any) -> Any:
    from conveyor.routing import _routers

    try:
        _routers(value)
    except ImproperlyConfigured as exc:
        raise ValueError(f"a dict, a router function or a list of them ({exc})") from None
    return value


def _annotations(value: Any) -> Any:
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError("a dict of {task name or '*': {attribute: value}} (or a list of them)")
        for name, attrs in item.items():
            if not isinstance(attrs, Mapping):
                raise ValueError(f"a dict of attributes for {name!r}, not {attrs!r}")
            if "rate_limit" in attrs:
                parse_rate(attrs["rate_limit"])
    return value


def _rate(value: Any) -> Any:
    parse_rate(value)
    return value


def _retry_policy(value: Any) -> dict[str, Any]:
    policy = _dict(value)
    allowed = {"max_retries", "interval_start", "interval_step", "interval_max", "retry_errors"}
    unknown = set(policy) - allowed
    if unknown:
        raise ValueError(f"a dict with keys among {sorted(allowed)} (unknown: {sorted(unknown)})")
    return policy


#: Pool names `-P/--pool` accepts (gevent and eventlet run on threads: see worker/pools.py).
POOL_NAMES = ("prefork", "processes", "threads", "solo", "asyncio", "gevent", "eventlet")


def _pool(value: Any) -> str:
    if value not in POOL_NAMES:
        raise ValueError(f"one of {', '.join(POOL_NAMES)}")
    return value  # type: ignore[no-any-return]


def _setting(default: Any, check: Check, doc: str = "") -> Any:
    # A default that is mutable gets a fresh copy per Settings object.
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass
class Settings:
    """All of an app's settings. Read `app.conf.name` or `app.conf['name']`."""

    # Broker and result backend
    broker_url: str | None = _setting(None, _optional(_url), "broker URL; none means sqlite:///conveyor.db")
    broker_transport_options: dict[str, Any] = _setting({}, _transport_options, "options for the broker transport")
    result_backend: str | None = _setting(
        None, _optional(_str), "result backend URL; none means the broker's embedded store"
    )
    result_backend_transport_options: dict[str, Any] = _setting(
        {}, _transport_options, "options for the result backend"
    )
    # Serialization
    task_serializer: str = _setting("json", _serializer, "serializer of task messages")
    result_serializer: str = _setting("json", _serializer, "serializer of results")
    accept_content: tuple[str, ...] = _setting(("json",), _accept, "serializers a worker accepts")
    result_accept_content: tuple[str, ...] | None = _setting(
        None, _optional(_accept), "serializers accepted for results; none means accept_content"
    )
    task_compression: str | None = _setting(None, _optional(_compression), "compression of task messages")
    task_message_format: str = _setting(
        "compact", _choice("compact", "celery"), "message envelope: compact msgpack, or kombu's JSON for Celery"
    )
    # Time
    timezone: str | None = _setting(None, _optional(_timezone), "time zone for schedules and dates shown")
    enable_utc: bool = _setting(True, _bool, "keep dates in UTC")
    # Routing
    task_queues: tuple[Queue, ...] | None = _setting(None, _optional(_queues), "queues workers consume by default")
    task_routes: Any = _setting(None, _optional(_routes), "task name -> queue rules")
    task_default_queue: str = _setting("celery", _str, "queue of tasks no route sends elsewhere")
    task_default_priority: int | None = _setting(
        None, _optional(_int(0)), "priority when a call gives none (0 is the highest)"
    )
    task_create_missing_queues: bool = _setting(True, _bool, "allow queues not listed in task_queues")
    # Calling
    task_publish_retry: bool = _setting(True, _bool, "retry a publish when the broker is unreachable")
    task_publish_retry_policy: dict[str, Any] = _setting(
        {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1},
        _retry_policy,
        "how publishes are retried",
    )
    task_always_eager: bool = _setting(False, _bool, "run tasks in the caller's process")
    task_eager_propagates: bool = _setting(False, _bool, "eager tasks re-raise their exceptions")
    task_annotations: Any = _setting(None, _optional(_annotations), "override task attributes by name or '*'")
    task_default_rate_limit: Any = _setting(None, _optional(_rate), "rate limit of every task")
    # Execution
    task_acks_late: bool = _setting(False, _bool, "acknowledge after the task ran, not before")
    task_reject_on_worker_lost: bool | None = _setting(
        None, _optional(_bool), "requeue an acks_late task whose process died"
    )
    task_acks_on_failure_or_timeout: bool = _setting(True, _bool, "acknowledge failed and timed-out acks_late tasks")
    task_max_redeliveries: int = _setting(
        3, _int(0), "times a message whose run died is delivered again before it is dead-lettered"
    )
    task_time_limit: float | None = _setting(None, _optional(_seconds), "hard time limit in seconds")
    task_soft_time_limit: float | None = _setting(None, _optional(_seconds), "soft time limit in seconds")
    task_send_sent_event: bool = _setting(False, _bool, "record a task-sent event for the dashboard at each send")
    # Conveyor records STARTED by default: the dashboard and scoreboard want it.
    task_track_started: bool = _setting(True, _bool, "record the STARTED state")
    task_ignore_result: bool = _setting(False, _bool, "store no results")
    task_store_errors_even_if_ignored: bool = _setting(False, _bool, "store failures of tasks that ignore results")
    # Results
    result_expires: float | None = _setting(86400.0, _optional(_seconds), "seconds results are kept")
    result_extended: bool = _setting(False, _bool, "also store name, args, kwargs, worker, retries, queue")
    # Worker
    worker_concurrency: int | None = _setting(None, _optional(_int(1)), "pool size; none means the CPU count")
    worker_pool: str = _setting("prefork", _pool, "pool: prefork, threads, solo, asyncio (gevent, eventlet accepted)")
    worker_prefetch_multiplier: int = _setting(4, _int(0), "prefetch = concurrency x this; 0 means unlimited")
    worker_prefetch_adaptive: bool = _setting(
        True, _bool, "grow the prefetch window while tasks are short (the multiplier stays the floor)"
    )
    worker_prefork_ahead: bool = _setting(
        True, _bool, "prefork children hold a few jobs ahead while tasks are short (-O fair: one at a time)"
    )
    worker_max_tasks_per_child: int | None = _setting(
        None, _optional(_int(1)), "recycle a prefork child after this many tasks"
    )
    worker_max_memory_per_child: int | None = _setting(
        None, _optional(_int(1)), "recycle a prefork child above this RSS (KiB)"
    )
    worker_disable_rate_limits: bool = _setting(False, _bool, "ignore rate limits")
    worker_enable_remote_control: bool = _setting(
        True, _bool, "answer inspect and control commands (app.control, conveyor inspect|control)"
    )
    worker_send_task_events: bool = _setting(
        True, _bool, "record task events (received, started, succeeded, ...) for the dashboard; one write a batch"
    )
    worker_revoke_expires: float = _setting(10800.0, _seconds, "seconds the broker remembers a revocation")
    # Logging of `conveyor worker` and `conveyor beat` (Celery's names and defaults)
    worker_hijack_root_logger: bool = _setting(
        True, _bool, "remove the root logger's handlers before adding Conveyor's (False: keep yours)"
    )
    worker_log_color: bool | None = _setting(None, _optional(_bool), "colour log lines (None: when on a terminal)")
    worker_log_format: str = _setting(
        "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s", _str, "format of the worker's log lines"
    )
    worker_log_datefmt: str | None = _setting(None, _optional(_str), "date format of the worker's log lines")
    worker_task_log_format: str = _setting(
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s",
        _str,
        "format of the lines of task loggers (get_task_logger)",
    )
    worker_task_log_datefmt: str | None = _setting(None, _optional(_str), "date format of task log lines")
    worker_redirect_stdouts: bool = _setting(
        True, _bool, "print() in tasks is logged (to the logger conveyor.redirected) instead of written raw"
    )
    worker_redirect_stdouts_level: str = _setting(
        "WARNING", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "level of redirected output"
    )
    # Beat
    beat_schedule: dict[str, Any] = _setting({}, _dict, "periodic tasks")
    beat_cron_starting_deadline: float | None = _setting(
        None, _optional(_seconds), "skip a crontab run missed by more than this many seconds"
    )
    beat_max_loop_interval: float = _setting(1.0, _seconds, "longest sleep between beat checks")
    beat_scheduler: Any = _setting(
        None,
        _optional(_class_or_path),
        "a Celery-style Scheduler class (or 'module:Class') beat runs instead of its own",
    )
    beat_schedule_filename: str = _setting(
        "celerybeat-schedule", _str, "the shelve file of beat_scheduler = 'conveyor.beat:PersistentScheduler'"
    )
    beat_sync_every: int = _setting(0, _int(0), "with beat_scheduler: sends between the scheduler's syncs (0: by time)")
    # Signing (conveyor/signing.py)
    task_signing_key: str | None = _setting(None, _optional(_str), "shared secret that signs messages (HMAC-SHA256)")
    task_signing_old_keys: tuple[str, ...] = _setting((), _names, "former secrets still accepted, while rotating")
    security_key: str | None = _setting(None, _optional(_str), "PEM private key file that signs messages")
    security_key_password: str | None = _setting(None, _optional(_str), "password of security_key")
    security_certificate: str | None = _setting(None, _optional(_str), "PEM certificate of security_key")
    security_cert_store: str | None = _setting(None, _optional(_str), "glob of the certificates whose messages count")
    security_digest: str = _setting("sha256", _str, "hash of the certificate signatures")
    # Modules
    imports: tuple[str, ...] = _setting((), _names, "modules the worker imports")
    include: tuple[str, ...] = _setting((), _names, "modules the worker imports (as Celery(include=...))")

    def __post_init__(self) -> None:
        #: Celery settings Conveyor has no use for, as they were set (read back as set).
        object.__setattr__(self, "without_effect", {})

    def __setattr__(self, name: str, value: Any) -> None:
        spec = _FIELDS.get(name)
        if spec is None:
            if name in OLD_NAMES:  # Celery 3's upper-case name
                setattr(self, OLD_NAMES[name], value)
                return
            reason = reason_without_effect(name)
            if reason is None:
                raise ImproperlyConfigured(unknown_setting_message(name))
            if name not in _NOTED:
                _NOTED.add(name)
                logger.info("Setting %s has no effect in Conveyor: %s", name, reason)
            self.without_effect[name] = value
            return
        try:
            value = spec.metadata["check"](value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"setting {name!r} expects {exc}; got {value!r}") from None
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: Celery's, read back as they were set.
        name = OLD_NAMES.get(name, name)
        if name in _FIELDS:
            return getattr(self, name)
        if name in CELERY_NAMES:
            return self.__dict__["without_effect"].get(name)
        raise AttributeError(unknown_setting_message(name))

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(unknown_setting_message(name))
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def __contains__(self, name: object) -> bool:
        return name in _FIELDS or name in CELERY_NAMES or name in OLD_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self else default

    def update(self, other: Mapping[str, Any] | None = None, **values: Any) -> None:
        """Set many settings; all are checked before any is changed."""
        merged = {**(other or {}), **values}
        trial = Settings(**{f: getattr(self, f) for f in _FIELDS})
        for name, value in merged.items():
            setattr(trial, name, value)
        for name in _FIELDS:
            object.__setattr__(self, name, getattr(trial, name))
        self.without_effect.update(trial.without_effect)

    def as_dict(self) -> dict[str, Any]:
        """Every setting, by name."""
        return {name: getattr(self, name) for name in _FIELDS}

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults, and the Celery ones set without effect."""
        values = {name: value for name, value in self.as_dict().items() if value != _default(name)}
        return {**values, **self.without_effect}


_FIELDS = {f.name: f for f in fields(Settings)}


def _default(name: str) -> Any:
    spec = _FIELDS[name]
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def unknown_setting_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), [*_FIELDS, *CELERY_NAMES], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}{hint}"


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Pick the settings out of a class, an instance or a module.

    Lower-case public names are settings (so a misspelt one is caught);
    imported modules, classes and functions are skipped. With a namespace
    (`'CELERY'`), only `CELERY_*` names are read, lower-cased, as Django does.
    """
    import inspect

    found: dict[str, Any] = {}
    for name in dir(obj):
        if name.startswith("_"):
            continue
        value = getattr(obj, name)
        if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
            continue
        if namespace:
            prefix = namespace.rstrip("_") + "_"
            if name.startswith(prefix):
                found[name[len(prefix) :].lower()] = value
        elif name.islower() or name in OLD_NAMES:
            found[name] = value
    return found
