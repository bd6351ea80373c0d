"""The options of one call, resolved once from the call, the task and the configuration.

`apply_async(countdown=10, queue="fast")`, the task's attributes (`@app.task(priority=3)`)
and the settings (`task_default_priority`) meet here: `CallOptions.resolve` turns them
into one typed value that the producer and `messages.build_message` read, so nothing
below the call looks at a loose `**options` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import check_priority

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.task import Task

#: Every option `apply_async` and `send_task` take (beyond args, kwargs, task_id, link, link_error, shadow).
CALL_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "exchange", "routing_key", "priority",
        "serializer", "compression", "ignore_result", "headers", "time_limit",
        "soft_time_limit", "retry", "retry_policy", "parent_id", "root_id", "group_id",
        "group_index", "retries", "reply_to", "chain", "deduplication_id", "deduplication_ttl",
    }
)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class CallOptions:
    """How one message is to be built, routed, encoded and published."""

    task_id: str | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    priority: int = 0
    ignore_result: bool = False
    serializer: str = "json"
    compression: str | None = None
    #: Routing: an explicit queue, exchange or routing key of the call, and the task's own queue.
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    task_queue: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    shadow: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    retries: int = 0
    reply_to: str | None = None
    #: Signatures as dicts: callbacks, errbacks, and the steps of a chain that follow.
    link: list[dict[str, Any]] | None = None
    link_error: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    #: Publishing: retried on connection errors per the policy (`task_publish_retry_policy`).
    retry: bool = True
    retry_policy: dict[str, Any] = field(default_factory=dict)
    deduplication_id: str | None = None
    deduplication_ttl: float | None = None

    @classmethod
    def resolve(
        cls,
        conf: Settings,
        options: Mapping[str, Any],
        task: Task[Any, Any] | None = None,
        now: datetime | None = None,
    ) -> CallOptions:
        """The call's `options` over the task's attributes over the configuration.

        `now` is read only when a countdown or a relative expiry needs it (the
        current time when not given).
        """
        get = options.get
        eta, countdown = get("eta"), get("countdown")
        expires = get("expires", task.expires if task else None)
        if countdown is not None or isinstance(expires, (int, float)):
            now = now or datetime.now(UTC)
            if countdown is not None:
                eta = now + timedelta(seconds=float(countdown))  # as in Celery, countdown wins over eta
            if isinstance(expires, (int, float)):
                expires = now + timedelta(seconds=float(expires))
        hard = get("time_limit", task.time_limit if task else None)
        soft = get("soft_time_limit", task.soft_time_limit if task else None)
        if hard is not None and soft is not None and soft > hard:
            raise ValueError(f"soft_time_limit ({soft}) must not be greater than time_limit ({hard})")
        priority = get("priority")
        if priority is None:
            priority = task.priority if task and task.priority is not None else conf.task_default_priority
        ignore_result = get("ignore_result")
        if ignore_result is None:
            ignore_result = task.ignore_result if task and task.ignore_result is not None else conf.task_ignore_result
        policy = get("retry_policy")
        dedup_id = get("deduplication_id")
        link, link_error, chain, headers = get("link"), get("link_error"), get("chain"), get("headers")
        return cls(
            task_id=get("task_id"),
            eta=None if eta is None else aware(eta),
            expires=None if expires is None else aware(expires),
            time_limit=hard,
            soft_time_limit=soft,
            priority=check_priority(int(priority or 0)),
            ignore_result=bool(ignore_result),
            serializer=get("serializer") or (task and task.serializer) or conf.task_serializer,
            compression=get("compression") or (task and task.compression) or conf.task_compression,
            queue=get("queue"),
            exchange=get("exchange"),
            routing_key=get("routing_key"),
            task_queue=task.queue if task else None,
            headers=dict(headers) if headers else {},
            shadow=get("shadow"),
            root_id=get("root_id"),
            parent_id=get("parent_id"),
            group_id=get("group_id"),
            group_index=get("group_index"),
            retries=int(get("retries") or 0),
            reply_to=get("reply_to"),
            link=None if link is None else signature_dicts(link),
            link_error=None if link_error is None else signature_dicts(link_error),
            chain=[dict(s) for s in chain] or None if chain else None,
            retry=bool(get("retry", conf.task_publish_retry)),
            retry_policy={**conf.task_publish_retry_policy, **policy} if policy else conf.task_publish_retry_policy,
            deduplication_id=None if dedup_id is None else str(dedup_id),
            deduplication_ttl=get("deduplication_ttl"),
        )


def aware(value: Any) -> datetime | None:
    """A datetime in UTC when naive, from a datetime or an ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, seconds or an ISO string, not {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    """`link=sig` or `link=[sig, ...]` as a list of plain dicts (None when none)."""
    if value is None:
        return None
    items: Sequence[Any] = value if isinstance(value, (list, tuple)) else [value]
    return [dict(s) for s in items] or None
