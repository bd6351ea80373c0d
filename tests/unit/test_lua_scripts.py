"""Redis's scripts are assembled from their files: each helper once, after the helpers it uses."""

from __future__ import annotations

import re

import pytest

from conveyor.lua import script

SCRIPTS = ["publish", "fetch", "ack", "renew", "requeue", "requeue_dead", "dead_letter", "purge", "peek", "unwait"]


def defined(text: str) -> list[str]:
    return re.findall(r"^local (?:function )?(\w+)", text, re.MULTILINE)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_helper_is_put_in_once_before_what_uses_it(name: str) -> None:
    text = script(name)
    names = [n for n in defined(text) if n in {"base", "variadic", "ready_list", "push_ready", "pop_ready",
                                               "promote", "live_waiters", "lease_of"}]  # fmt: skip
    assert len(names) == len(set(names)), f"{name}: a helper is defined twice: {names}"
    for helper, first_use in (("base", "ready_list"), ("variadic", "push_ready"), ("push_ready", "promote")):
        if helper in names and first_use in names:
            assert names.index(helper) < names.index(first_use)


def test_fetch_takes_the_ready_lists_and_the_waiters_helpers() -> None:
    names = defined(script("fetch"))
    assert {"base", "variadic", "pop_ready", "promote", "live_waiters"} <= set(names)
