"""Routing to queues (S4 task_queues/task_routes)."""

from __future__ import annotations

import re

import pytest

from conveyor import Exchange, Queue
from conveyor.exceptions import ImproperlyConfigured
from conveyor.routing import Router

QUEUES = [Queue("images", Exchange("media"), routing_key="media.images"), Queue("celery")]


def test_explicit_queue_wins() -> None:
    router = Router(QUEUES, {"a.*": "images"}, "celery")
    assert router.route("a.b", queue="other") == "other"
    assert router.route("a.b", queue=Queue("q2")) == "q2"


def test_routes_exact_before_glob_and_regex() -> None:
    router = Router(QUEUES, {"a.*": {"queue": "glob"}, "a.b": {"queue": "exact"}, re.compile(r"^x\d$"): "regex"}, "d")
    assert router.route("a.b") == "exact"
    assert router.route("a.c") == "glob"
    assert router.route("x1") == "regex"
    assert router.route("zzz") == "d"


def test_router_functions_and_lists() -> None:
    def by_args(name, args, kwargs, options, task=None, **kw):  # type: ignore[no-untyped-def]
        return {"queue": "big"} if args and args[0] > 100 else None

    router = Router(QUEUES, [by_args, {"t.*": "small"}], "celery")
    assert router.route("t.x", (1000,)) == "big"
    assert router.route("t.x", (1,)) == "small"


def test_exchange_and_routing_key_resolve_to_the_bound_queue() -> None:
    router = Router(QUEUES, None, "celery")
    assert router.route("t", exchange="media", routing_key="media.images") == "images"
    assert router.route("t", routing_key="media.images") == "images"
    assert router.route("t", routing_key="adhoc") == "adhoc"  # the anonymous exchange routes by queue name


def test_task_queue_attribute_then_default() -> None:
    router = Router(QUEUES, None, "celery")
    assert router.route("t", task_queue="tq") == "tq"
    assert router.route("t") == "celery"


def test_bad_route_is_a_clear_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="task_routes"):
        Router([], {"a": 42}, "celery")
