"""Serializers registered as projects register theirs for Celery (kombu's `register`)."""

from __future__ import annotations

import json

from conveyor import serialization


def test_a_serializer_registered_the_kombu_way_round_trips_text_and_bytes() -> None:
    serialization.register("upper-json", lambda v: json.dumps(v).upper(), json.loads, "application/x-upper-json")
    data, content_type = serialization.dumps({"a": "b"}, "upper-json")
    assert (data, content_type) == (b'{"A": "B"}', "application/x-upper-json")
    assert serialization.serializer("application/x-upper-json").loads(data) == {"A": "B"}  # text given back

    serialization.register("raw", bytes, lambda data: data[::-1], "application/x-raw", content_encoding="binary")
    assert serialization.serializer("raw").loads(serialization.dumps(b"abc", "raw")[0]) == b"cba"  # bytes given back
